"""The paper's figures, each described once: what it shows (its report caption), what it reads
and, in ``distreach.figures``, the function that draws it.

This module imports nothing heavy, so the workflow reads it while planning: the ``figure`` rule
takes its figure numbers, inputs and captions from here. The drawing functions register
themselves in ``distreach.figures.DRAW`` under the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    caption: str
    # "collected": its experiments' collected tables; "pos": its models' POS tables; "nexttoken": its
    # model's table of next-token distributions (distreach.nexttoken)
    reads: str = "collected"


FIGURES: dict[str, Figure] = {
    "fig03": Figure(
        "A model's next-token distribution after a short text, an Eq. 1 target of exactly its entropy and, "
        "unless switched off, the distribution of a soft prompt tuned on that target: (a) the probability of each token by rank,"
        " one line per distribution, both axes logarithmic; (b) the most probable tokens of each, labelled "
        "with their text (paper Fig. 3).",
        reads="nexttoken",
    ),
    "fig01": Figure(
        "Minimum KL divergence (over inits) between target and prompted next-token distribution against "
        "target entropy, one line per model: mean over the targets of each entropy level with a band of ±"
        " one standard error over those targets (paper Fig. 1)."
    ),
    "fig04": Figure(
        "Minimum KL against target entropy on one model for hard, hybrid (several numbers of soft "
        "positions) and soft prompts; small points are single inits, lines the mean over targets of the "
        "minimum over inits (paper Fig. 4)."
    ),
    "fig05": Figure(
        "Minimum KL (over inits) and the entropy of the prompted distribution at that minimum against "
        "target entropy on one model: mean over the targets of each level with a 95% t-interval over "
        "those targets (paper Fig. 5)."
    ),
    "fig06": Figure(
        "Minimum KL (over inits) against target entropy for each pretrained model and its randomly "
        "initialised twin on the same targets, one panel per model: mean over targets with a band of ± "
        "one standard error over targets (paper Fig. 6)."
    ),
    "fig07": Figure(
        "Mean minimum KL (a) and entropy of the prompted distribution (b) for targets with k outlier "
        "tokens and for vanilla targets of the same entropies, with 95% t-intervals over the targets of "
        "each level (paper Fig. 7)."
    ),
    "fig08": Figure(
        "Hard-prompt minimum KL (over inits, one point per target) on the model's own next-token "
        "distributions and on vanilla targets of matched entropy, with least-squares lines and their R² "
        "(a), and the achieved entropy (b) (paper Fig. 8)."
    ),
    "fig09": Figure(
        "Soft-prompt minimum KL (over inits, one point per target) on LM-generated targets, on the "
        "minimum over each one's token-shuffled copies (single copies as grey points) and on vanilla "
        "targets of matched entropy, with least-squares lines and R² (paper Fig. 9)."
    ),
    "fig10": Figure(
        "Soft-prompt minimum KL (over inits, one point per target) on next-token distributions of another"
        " model mapped onto the tuning model's vocabulary, and on the vanilla targets matched to them "
        "(one series per source model), with least-squares lines and R², one panel per tuning model "
        "(paper Fig. 10)."
    ),
    "fig11": Figure(
        "Soft-prompt minimum KL (over inits) against target entropy for several prefix lengths on one "
        "model: mean over targets with a band of ± one standard error over targets (paper Fig. 11)."
    ),
    "fig12": Figure(
        "Share of each of the most common parts of speech among the English tokens of each model's "
        "vocabulary that spaCy tags as one token with one unambiguous POS: bars are shares per model "
        "(paper Fig. 12).",
        reads="pos",
    ),
    "fig13": Figure(
        "Minimum KL over inits of soft prompts on uniform distributions over tokens of one part of "
        "speech, per POS and model, base and instruction-tuned variants side by side: boxes are the "
        "quartiles over targets, whiskers 1.5 times the interquartile range (paper Fig. 13)."
    ),
}


def figure_experiments(spec: dict) -> list[str]:
    """The experiments a figure's config entry (``figures.figNN``) reads: ``experiments`` or
    ``experiment``; none for a figure of POS tables."""
    if spec.get("experiments"):
        return list(spec["experiments"])
    return [spec["experiment"]] if spec.get("experiment") else []


def figure_inputs(fig: str, spec: dict) -> dict[str, list[str]]:
    """The files figure ``fig`` draws from, by kind: ``tables`` (collected tables of its
    experiments), ``pos`` (the POS tables of its ``models``) or ``nexttoken`` (the next-token
    distributions of its ``model``)."""
    if FIGURES[fig].reads == "pos":
        return {"pos": [f"results/pos/{m}.arrow" for m in spec["models"]]}
    if FIGURES[fig].reads == "nexttoken":
        return {"nexttoken": [f"results/nexttoken/{spec['model']}.arrow"]}
    return {"tables": [f"results/collected/{e}.arrow" for e in figure_experiments(spec)]}
