"""The paper's figures, each described once: what it shows (its report caption), what it reads,
the keys of its config entry (``figures.figNN``), the models and pairs it needs, and which claims
(:mod:`distreach.claims`) are tested on its data. The drawing function is the one other part of
a figure: ``@figure("figNN")`` in :mod:`distreach.figures` registers it in ``DRAW``.

Everything else is derived from an entry: the schema of its config entry (:func:`figures_schema`,
checked with the rest of the config by :mod:`distreach.config`), the checks of its references
(experiments, models, pairs, target kinds), the files its ``figure`` job reads, the claims report's
plan and inputs, and the caption under it in ``snakemake --report``.

This module imports nothing heavy, so the workflow reads it while planning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# schemas of the keys a figure's config entry may have
EXPERIMENT = {"type": "string"}
EXPERIMENTS = {"type": "array", "items": {"type": "string"}, "minItems": 1}
MODEL = {"type": "string"}


def described(schema: dict, description: str) -> dict:
    return {**schema, "description": description}


@dataclass(frozen=True)
class Pairs:
    """A figure's ``pairs`` key: model -> model, both in the figure's experiments."""

    name: str  # what a pair is, as messages say it ("base/instruct")
    description: str
    required: bool = False
    random_init: bool = False  # each pair's second model is a random_init copy of its first

    def schema(self) -> dict:
        extra = {"minProperties": 1} if self.required else {"default": {}}
        return {"type": "object", "description": self.description, "additionalProperties": {"type": "string"}, **extra}


@dataclass(frozen=True)
class Figure:
    caption: str
    # its config entry's keys other than ``pairs``: name -> JSON schema; a key without a default is
    # required. ``experiment``/``experiments`` name the experiments it reads, ``model`` a model
    # that must be in them (or, for a figure of one model's data, any configured model), ``models``
    # configured models
    keys: dict = field(default_factory=dict)
    # "collected": its experiments' collected tables; "pos": its models' POS tables; "nexttoken":
    # its model's table of next-token distributions (distreach.nexttoken)
    reads: str = "collected"
    pairs: Pairs | None = None
    target_kinds: tuple[str, ...] = ()  # the target kinds its experiments must tune on (empty: any)
    needs_kinds: tuple[str, ...] = ()  # one of its experiments at least tunes on one of these kinds
    method: str | None = "soft"  # the method whose rows it draws (one of its experiments must list it); None: any
    claims: tuple[str, ...] = ()  # the claims tested on its data (distreach.claims)

    def schema(self) -> dict:
        """The JSON schema of the figure's config entry."""
        props = dict(self.keys)
        if self.pairs is not None:
            props["pairs"] = self.pairs.schema()
        required = [k for k, s in props.items() if "default" not in s]
        return {"type": "object", "additionalProperties": False, "required": required, "properties": props}


# the paper's figures this workflow does not draw, and why (a request for one says so)
NOT_DRAWN = {"fig02": "Fig. 2 illustrates the three tuning frameworks: a drawing, not data"}

FIGURES: dict[str, Figure] = {
    "fig03": Figure(
        "A model's next-token distribution after a short text, an Eq. 1 target of exactly its entropy and, "
        "unless switched off, the distribution of a soft prompt tuned on that target: (a) the probability of each token by rank,"
        " one line per distribution, both axes logarithmic; (b) the most probable tokens of each, labelled "
        "with their text (paper Fig. 3).",
        keys={
            "model": described(MODEL, "the model whose next-token distribution is drawn"),
            "text": {"type": "string", "minLength": 1, "default": "I love",
                     "description": "the text before the next token (the paper: 'I love')"},
            "top": {"type": "integer", "minimum": 1, "default": 10, "description": "most probable tokens labelled per distribution"},
            "tune": {"type": "boolean", "default": True,
                     "description": "also tune a soft prompt on the Eq. 1 target (config tuning settings) and draw what it produces"},
            "inits": {"type": "integer", "minimum": 1, "default": 1, "description": "prompt inits of that soft prompt (the best is drawn)"},
        },
        reads="nexttoken",
        method=None,
    ),
    "fig01": Figure(
        "Minimum KL divergence (over inits) between target and prompted next-token distribution against "
        "target entropy, one line per model: mean over the targets of each entropy level with a band of ±"
        " one standard error over those targets (paper Fig. 1).",
        keys={"experiment": EXPERIMENT},
        claims=("C1", "C2"),
    ),
    "fig04": Figure(
        "Minimum KL against target entropy on one model for hard, hybrid (several numbers of soft "
        "positions) and soft prompts, and gcg prompts where the run has them (ours: a GCG search for "
        "readable hard prompts); small points are single inits, lines the mean over targets of the "
        "minimum over inits (paper Fig. 4).",
        keys={"experiments": EXPERIMENTS, "model": MODEL},
        method=None,
        claims=("C3", "G1"),
    ),
    "fig05": Figure(
        "Minimum KL (over inits) and the entropy of the prompted distribution at that minimum against "
        "target entropy on one model: mean over the targets of each level with a 95% t-interval over "
        "those targets (paper Fig. 5).",
        keys={"experiment": EXPERIMENT, "model": MODEL},
    ),
    "fig06": Figure(
        "Minimum KL (over inits) against target entropy for each pretrained model and its randomly "
        "initialised copy on the same targets, one panel per model: mean over targets with a band of ± "
        "one standard error over targets (paper Fig. 6).",
        keys={"experiments": EXPERIMENTS},
        pairs=Pairs("pretrained/random-init", "pretrained model -> its random-init copy (a random_init source)", required=True,
                    random_init=True),
        claims=("C7",),
    ),
    "fig07": Figure(
        "Mean minimum KL (a) and entropy of the prompted distribution (b) for targets with k outlier "
        "tokens and for vanilla targets of the same entropies, with 95% t-intervals over the targets of "
        "each level (paper Fig. 7).",
        keys={"experiments": EXPERIMENTS, "model": MODEL},
        needs_kinds=("outlier",),
        claims=("C4",),
    ),
    "fig08": Figure(
        "Hard-prompt minimum KL (over inits, one point per target) on the model's own next-token "
        "distributions and on vanilla targets of matched entropy, with least-squares lines and their R² "
        "(a), and the achieved entropy (b) (paper Fig. 8).",
        keys={"experiments": EXPERIMENTS, "model": MODEL},
        needs_kinds=("lm",),
        method="hard",
        claims=("C5",),
    ),
    "fig09": Figure(
        "Soft-prompt minimum KL (over inits, one point per target) on LM-generated targets, on the "
        "minimum over each one's token-shuffled copies (single copies as grey points) and on vanilla "
        "targets of matched entropy, with least-squares lines and R² (paper Fig. 9).",
        keys={"experiments": EXPERIMENTS, "model": MODEL},
        needs_kinds=("lm", "shuffled"),
        claims=("C5",),
    ),
    "fig10": Figure(
        "Soft-prompt minimum KL (over inits, one point per target) on next-token distributions of another"
        " model mapped onto the tuning model's vocabulary, and on the vanilla targets matched to them "
        "(one series per source model), with least-squares lines and R², one panel per tuning model "
        "(paper Fig. 10).",
        keys={"experiments": EXPERIMENTS},
        needs_kinds=("migrated",),
        claims=("C6",),
    ),
    "fig11": Figure(
        "Soft-prompt minimum KL (over inits) against target entropy for several prefix lengths on one "
        "model: mean over targets with a band of ± one standard error over targets (paper Fig. 11).",
        keys={"experiments": described(EXPERIMENTS, "experiments differing in prefix_len"), "model": MODEL},
    ),
    "fig12": Figure(
        "Share of each of the most common parts of speech among the English tokens of each model's "
        "vocabulary that spaCy tags as one token with one unambiguous POS: bars are shares per model "
        "(paper Fig. 12).",
        keys={
            "models": {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True,
                       "description": "models whose vocabularies are compared"},
            "top": {"type": "integer", "minimum": 1, "default": 8, "description": "how many of the most common POS tags are shown"},
        },
        reads="pos",
        method=None,
    ),
    "fig13": Figure(
        "Minimum KL over inits of soft prompts on uniform distributions over tokens of one part of "
        "speech, per POS and model, base and instruction-tuned variants side by side: boxes are the "
        "quartiles over targets, whiskers 1.5 times the interquartile range (paper Fig. 13).",
        keys={"experiment": described(EXPERIMENT, "an experiment on pos targets")},
        pairs=Pairs("base/instruct", "base model -> its instruction-tuned variant, drawn side by side"),
        target_kinds=("pos",),
        claims=("C8", "C9"),
    ),
}


def figures_schema() -> dict:
    """What the registry says of the config's ``figures`` section (the schema file says the rest):
    one optional entry per registered figure, and no other."""
    return {"additionalProperties": False, "properties": {fig: entry.schema() for fig, entry in FIGURES.items()}}


def figure_experiments(spec: dict) -> list[str]:
    """The experiments a figure's config entry (``figures.figNN``) reads: ``experiments`` or
    ``experiment``; none for a figure of POS tables."""
    if spec.get("experiments"):
        return list(spec["experiments"])
    return [spec["experiment"]] if spec.get("experiment") else []


def figure_reads(fig: str, spec: dict) -> tuple[str, list[str]]:
    """What figure ``fig`` draws from: ``("tables", experiments)`` (their collected tables),
    ``("pos", models)`` (their POS tables) or ``("nexttoken", [model])`` (its next-token
    distributions); the workflow's rules name the files."""
    if FIGURES[fig].reads == "pos":
        return "pos", list(spec["models"])
    if FIGURES[fig].reads == "nexttoken":
        return "nexttoken", [spec["model"]]
    return "tables", figure_experiments(spec)


def claim_figures(claim: str) -> list[str]:
    """The figures whose data claim ``claim`` is tested on, in registry order."""
    return [fig for fig, entry in FIGURES.items() if claim in entry.claims]


def tested_figures(figures: dict) -> dict:
    """The entries of a config's ``figures`` section that claims are tested on."""
    return {fig: spec for fig, spec in figures.items() if FIGURES[fig].claims}


def tested_experiments(config: dict) -> list[str]:
    """The experiments the claims report reads (those of :func:`tested_figures`), in config order."""
    read = {e for spec in tested_figures(config.get("figures") or {}).values() for e in figure_experiments(spec)}
    return [e for e in config["experiments"] if e in read]
