"""Vanilla targets (paper Eq. 1): distributions of requested entropies, from random logits."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from .errors import DistreachError
from .infotheory import entropy, max_entropy
from .optimrows import keep_rows
from .units import DEFAULT_UNIT, check_unit, from_unit, to_unit
from .seeds import derive_seed
from .targets import targets_table

PER_LEVEL = 5  # targets per entropy level (vanilla and outlier families)
TOLERANCE = 0.01  # how close (in the grid's unit) a target's entropy must come to the level
MAX_ITERS = 5000  # iteration budget of the descent
@dataclass(frozen=True)
class EntropyGrid:
    """Requested entropies from ``start`` to ``stop`` (default log|V|) by ``step``, in ``unit``."""

    step: float
    start: float = 0.0
    stop: float | None = None
    unit: str = DEFAULT_UNIT
    include_max: bool = True

    def levels(self, vocab_size: int) -> list[float]:
        check_unit(self.unit)
        top = max_entropy(vocab_size, self.unit)
        stop = top if self.stop is None else min(self.stop, top)
        if self.start < 0 or self.step <= 0:
            raise DistreachError(f"entropy grid: start must be >= 0 and step > 0 (got {self.start}, {self.step})")
        n = int(math.floor((stop - self.start) / self.step + 1e-9)) + 1
        levels = [round(self.start + i * self.step, 10) for i in range(max(n, 0))]
        if not levels:
            bound = (f"stop {self.stop} {self.unit}" if self.stop is not None and self.stop < self.start
                     else f"log|V| = {top:.4g} {self.unit} of {vocab_size} tokens")
            raise DistreachError(f"entropy grid: start {self.start} {self.unit} is above {bound}: no levels")
        if self.include_max and self.stop is None and top - levels[-1] > 1e-6:
            levels.append(top)
        return levels


@dataclass(frozen=True)
class VanillaSettings:
    """Eq. 1 of the paper: descend |H(softmax(z)) - h|^2 from random logits z (Adam).

    lr 0.5 reaches every level of a 262k vocabulary, 0 included, within 0.01 nats in
    a few hundred iterations; at lr 0.1 the squared loss's vanishing gradient near
    h = 0 needs thousands."""

    per_level: int = PER_LEVEL
    tolerance: float = TOLERANCE  # in the grid's unit
    max_iters: int = MAX_ITERS
    lr: float = 0.5
    init_scale: float = 1.0
    seed: int = 0
    chunk_rows: int = 32


def _fit_entropy(z: torch.Tensor, h_nats: torch.Tensor, tol_nats: float, max_iters: int, lr: float):
    """Adam on the logits of every row until each row's entropy is within tolerance.

    Rows are independent (Adam is elementwise and the loss is a sum over rows), so a row's
    result does not depend on the other rows of the chunk (bit for bit at one torch thread:
    :mod:`distreach.optimrows`), and a row within tolerance leaves the batch. Returns the log-probabilities at the
    first iteration each row was within tolerance, and a mask of the rows that never got there."""
    z = torch.nn.Parameter(z.clone())
    opt = torch.optim.Adam([z], lr=lr)
    best = torch.empty_like(z)
    active = torch.arange(z.shape[0])
    for _ in range(max_iters + 1):
        logp = torch.log_softmax(z, -1)
        h = entropy(logp, finite=True)
        hit = (h - h_nats[active]).abs() <= tol_nats
        best[active[hit]] = logp.detach()[hit]
        if hit.all():
            active = active[:0]
            break
        opt.zero_grad(set_to_none=True)
        ((h - h_nats[active]) ** 2).sum().backward()
        opt.step()
        if hit.any():
            z, opt = keep_rows(opt, z, ~hit)
            active = active[~hit]
    failed = torch.zeros(best.shape[0], dtype=torch.bool)
    failed[active] = True
    return best, failed


def vanilla_targets(vocab_size: int, grid: EntropyGrid, settings: VanillaSettings, kind: str = "vanilla") -> pa.Table:
    """Vanilla targets (paper Eq. 1): ``settings.per_level`` distributions per grid level."""
    unit = grid.unit
    levels = grid.levels(vocab_size)
    rows = [(li, h, r) for li, h in enumerate(levels) for r in range(settings.per_level)]
    return entropy_matched_targets(
        vocab_size,
        [h for _, h, _ in rows],
        [f"{kind}-L{li:03d}-r{r}" for li, _, r in rows],
        unit,
        settings,
        kind,
    )


def entropy_matched_targets(vocab_size, entropies, target_ids, unit, settings: VanillaSettings, kind="vanilla") -> pa.Table:
    """One Eq. 1 target per requested entropy (in ``unit``), with the given ids."""
    check_unit(unit)
    top = max_entropy(vocab_size, unit)
    for tid, h in zip(target_ids, entropies):
        if not 0 <= h <= top + 1e-9:
            raise DistreachError(f"target {tid}: entropy {h} {unit} is outside [0, log|V| = {top:.4f}]")
    tol = from_unit(settings.tolerance, unit)
    seeds = [derive_seed(settings.seed, kind, tid) for tid in target_ids]
    out = np.empty((len(entropies), vocab_size), dtype=np.float32)
    achieved = np.empty(len(entropies))
    for lo in range(0, len(entropies), settings.chunk_rows):
        sl = slice(lo, lo + settings.chunk_rows)
        z = torch.stack(
            [torch.randn(vocab_size, generator=torch.Generator().manual_seed(s)) for s in seeds[sl]]
        ) * settings.init_scale
        h = torch.tensor([from_unit(min(e, top), unit) for e in entropies[sl]])
        logp, failed = _fit_entropy(z, h, tol, settings.max_iters, settings.lr)
        if failed.any():
            i = int(failed.nonzero()[0]) + lo
            raise DistreachError(
                f"target {target_ids[i]}: entropy {entropies[i]} {unit} not reached within "
                f"{settings.max_iters} iterations (tolerance {settings.tolerance} {unit}); "
                "raise max_iters or tolerance"
            )
        out[sl] = logp.numpy()
        achieved[sl] = to_unit(entropy(logp).numpy(), unit)
    return targets_table(target_ids, kind, entropies, achieved, unit, seeds, out)
