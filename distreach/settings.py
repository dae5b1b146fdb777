"""The tuning settings (:class:`TuneConfig`) and their checks, without torch: the engine tunes with
them, and the workflow checks every tuning job's settings before any job runs
(:func:`distreach.config.check_config`)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DistreachError
from .methods import DEFAULT_METHOD, METHODS, ROW_SETTINGS
from .tokens import BOS_POLICIES

GCG_KEYS = ("gcg_width", "gcg_topk", "gcg_replace", "readable")  # TuneConfig fields of method gcg only
INITS = ("vocab", "normal")
# the keys of a target family's config entry (``targets.<name>``) each kind reads besides ``kind``
# (distreach.targetfamily.make_family reads them; a key another kind reads is refused in the config)
DESCENT_KEYS = ("tolerance", "max_iters", "lr")  # the entropy descent of Eq. 1 (and 2-3)
FAMILY_KEYS = {
    "vanilla": ("grid", "per_level", *DESCENT_KEYS),
    "outlier": ("grid", "per_level", "ks", "alpha", "beta", "delta", *DESCENT_KEYS),
    "lm": ("n", "prompt_len", "bos"),
    "pos": ("tags", "n_tokens", "draws"),
    "matched": ("of", *DESCENT_KEYS),
    "shuffled": ("of", "copies"),
    "migrated": ("of", "source"),
}
# patience None: the method's. The paper's methods stop after PATIENCE steps without a gain (App. B).
# gcg moves to its best candidate even when that is worse, so its lowest KL falls in bursts with
# long runs of steps between them: the paper's patience stops most gcg rows long before their lowest
# KL (measured: benchmarks/README.md, "gcg over more steps")
PATIENCE = 20
GCG_PATIENCE = 40


@dataclass(frozen=True)
class TuneConfig:
    method: str = DEFAULT_METHOD
    prefix_len: int = 5
    n_soft: int | None = None  # hybrid: soft positions (default L // 2); soft: L; hard: 0
    soft_positions: tuple | None = None  # hybrid: which positions are soft (default the first n_soft)
    lr: float = 0.1
    weight_decay: float = 0.01
    max_steps: int = 500
    patience: int | None = None  # steps without a gain before a row stops; None: the method's (GCG_PATIENCE, else PATIENCE)
    min_delta: float = 1e-4  # relative gain over the best KL a step needs to reset patience
    stop_kl_nats: float = 0.0  # a row whose KL reaches this has found its target and stops
    candidates: int = 1  # hard update: 1 = argmin of the linear score (paper); k = best of k exact
    exclude_special: bool = True  # hard tokens and vocab inits never use special or reserved tokens
    exclude_untypable: bool = False  # ... nor tokens that do not survive decode -> encode
    init: str = "vocab"  # soft: embeddings of random vocabulary tokens, or a scaled normal
    init_scale: float = 1.0  # normal init: std = init_scale * std of the embedding table
    bos: str = "auto"  # BOS before the prefix: auto (the tokenizer's, if any), bos (required), none
    batch_size: int = 0  # rows tuned together; 0 = automatic (distreach.engine.AUTO_BATCH)
    top_k: int = 20  # tokens of p and of q at the best step recorded per row (0: none)
    gcg_width: int = 0  # gcg: candidate prompts per row and step; 0 = automatic (distreach.gcg.AUTO_WIDTH)
    gcg_topk: int = 256  # gcg: tokens per position, by the gradient, that candidates draw from
    gcg_replace: int = 1  # gcg: positions a candidate changes
    readable: bool = True  # gcg: only prompts whose text encodes back to their tokens

    def __post_init__(self):
        if self.soft_positions is not None:
            object.__setattr__(self, "soft_positions", tuple(int(i) for i in self.soft_positions))
        if self.patience is None:
            object.__setattr__(self, "patience", GCG_PATIENCE if self.method == "gcg" else PATIENCE)
        checks = [
            (self.method in METHODS, "method", f"must be one of {METHODS}"),
            (self.prefix_len >= 1, "prefix_len", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.max_steps >= 1, "max_steps", "must be >= 1"),
            (self.patience >= 1, "patience", "must be >= 1"),
            (0 <= self.min_delta < 1, "min_delta", "must be in [0, 1)"),
            (self.stop_kl_nats >= 0, "stop_kl_nats", "must be >= 0"),
            (self.candidates >= 1, "candidates", "must be >= 1"),
            (self.init in INITS, "init", f"must be one of {INITS}"),
            (self.init_scale > 0, "init_scale", "must be > 0"),
            (self.bos in BOS_POLICIES, "bos", f"must be one of {BOS_POLICIES}"),
            (self.batch_size >= 0, "batch_size", "must be >= 0"),
            (self.top_k >= 0, "top_k", "must be >= 0"),
            (self.gcg_width >= 0, "gcg_width", "must be >= 0"),
            (self.gcg_topk >= 1, "gcg_topk", "must be >= 1"),
            (self.gcg_replace >= 1, "gcg_replace", "must be >= 1"),
        ]
        for ok, key, why in checks:
            if not ok:
                raise DistreachError(f"tuning.{key}: {why} (got {getattr(self, key)!r})")
        if self.method != "gcg":
            for key in GCG_KEYS:
                if getattr(self, key) != TuneConfig.__dataclass_fields__[key].default:
                    raise DistreachError(f"tuning.{key}: a setting of method gcg only (method is {self.method})")
        if self.method == "gcg" and self.readable and not self.exclude_special:
            raise DistreachError("tuning.exclude_special: false puts special-token markup in readable gcg prompts; "
                                 "set readable: false to search special tokens too")
        L, sp = self.prefix_len, self.soft_positions
        if self.gcg_replace > L:
            raise DistreachError(f"tuning.gcg_replace: a candidate cannot change more positions than the prompt's {L} "
                                 f"(got {self.gcg_replace})")
        if self.method != "hybrid" and (self.n_soft is not None or sp is not None):
            want = {"soft": L, "hard": 0, "gcg": 0}[self.method]
            if (self.n_soft is not None and self.n_soft != want) or (sp is not None and len(sp) != want):
                raise DistreachError(f"tuning.n_soft: a {self.method} prompt has {want} soft positions")
        if sp is not None:
            if len(set(sp)) != len(sp) or not all(0 <= i < L for i in sp):
                raise DistreachError(f"tuning.soft_positions: must be distinct positions in 0..{L - 1} (got {list(sp)})")
            if self.n_soft is not None and self.n_soft != len(sp):
                raise DistreachError(f"tuning.soft_positions: {len(sp)} positions but n_soft is {self.n_soft}")
        elif self.n_soft is not None and not 0 <= self.n_soft <= L:
            raise DistreachError(f"tuning.n_soft: must be in 0..{L} (got {self.n_soft})")

    @property
    def soft_mask(self) -> tuple[bool, ...]:
        """For each prefix position, whether it is soft."""
        L = self.prefix_len
        if self.method == "soft":
            return (True,) * L
        if self.method in ("hard", "gcg"):
            return (False,) * L
        if self.soft_positions is not None:
            return tuple(i in self.soft_positions for i in range(L))
        k = L // 2 if self.n_soft is None else self.n_soft
        return tuple(i < k for i in range(L))

    @property
    def n_soft_positions(self) -> int:
        return sum(self.soft_mask)


def tuning_config(defaults: dict, overrides: dict | None = None) -> TuneConfig:
    """A TuneConfig from the config's ``tuning`` defaults and an experiment's overrides."""
    merged = {**(defaults or {}), **(overrides or {})}
    known = set(TuneConfig.__dataclass_fields__)
    unknown = sorted(set(merged) - known)
    if unknown:
        raise DistreachError(f"tuning: unknown key(s) {', '.join(unknown)}")
    return TuneConfig(**merged)


def soft_tuning(settings: dict) -> TuneConfig:
    """The TuneConfig of a soft prompt from tuning ``settings`` that may be another method's (the
    config's ``tuning``, which Fig. 3's soft prompt tunes with): their method, soft positions and
    gcg settings left out."""
    return tuning_config({k: v for k, v in settings.items() if k not in ROW_SETTINGS + GCG_KEYS})
