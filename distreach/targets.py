"""Target distributions over a model's vocabulary, stored as Arrow files.

A target file has one row per target: ``target_id, kind, requested_entropy,
achieved_entropy, entropy_unit, seed, vocab_size`` and ``logprobs``, the
log-probabilities as a float32 fixed-size list of length |V|.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from .errors import DistreachError, one_line
from .infotheory import entropy, max_entropy
from .units import check_unit, from_unit, to_unit
from .io import read_arrow
from .seeds import derive_seed

log = logging.getLogger(__name__)

TARGET_COLUMNS = (
    "target_id",
    "kind",
    "requested_entropy",
    "achieved_entropy",
    "entropy_unit",
    "seed",
    "vocab_size",
    "logprobs",
)


_STRING = (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), pa.string())
_NUMBER = (lambda t: pa.types.is_integer(t) or pa.types.is_floating(t), pa.float64())
COLUMN_TYPES = {  # column: (which Arrow types a target file may give, the type it is read as)
    "target_id": _STRING, "kind": _STRING, "entropy_unit": _STRING,
    "requested_entropy": _NUMBER, "achieved_entropy": _NUMBER,
    "seed": (pa.types.is_integer, pa.int64()), "vocab_size": (pa.types.is_integer, pa.int64()),
}


@dataclass(frozen=True)
class EntropyGrid:
    """Requested entropies from ``start`` to ``stop`` (default log|V|) by ``step``, in ``unit``."""

    step: float
    start: float = 0.0
    stop: float | None = None
    unit: str = "bits"
    include_max: bool = True

    def levels(self, vocab_size: int) -> list[float]:
        check_unit(self.unit)
        top = max_entropy(vocab_size, self.unit)
        stop = top if self.stop is None else min(self.stop, top)
        if self.start < 0 or self.step <= 0:
            raise DistreachError(f"entropy grid: start must be >= 0 and step > 0 (got {self.start}, {self.step})")
        n = int(math.floor((stop - self.start) / self.step + 1e-9)) + 1
        levels = [round(self.start + i * self.step, 10) for i in range(max(n, 0))]
        if self.include_max and self.stop is None and top - levels[-1] > 1e-6:
            levels.append(top)
        return levels


@dataclass(frozen=True)
class VanillaSettings:
    """Eq. 1 of the paper: descend |H(softmax(z)) - h|^2 from random logits z (Adam).

    lr 0.5 reaches every level of a 262k vocabulary, 0 included, within 0.01 nats in
    a few hundred iterations; at lr 0.1 the squared loss's vanishing gradient near
    h = 0 needs thousands."""

    per_level: int = 5
    tolerance: float = 0.01  # in the grid's unit
    max_iters: int = 5000
    lr: float = 0.5
    init_scale: float = 1.0
    seed: int = 0
    chunk_rows: int = 32


def _fit_entropy(z: torch.Tensor, h_nats: torch.Tensor, tol_nats: float, max_iters: int, lr: float):
    """Adam on the logits of every row until each row's entropy is within tolerance.

    Rows are independent (Adam is elementwise and the loss is a sum over rows), so
    a row's result does not depend on the other rows of the chunk. Returns the
    log-probabilities at the first iteration each row was within tolerance, and a
    mask of the rows that never got there."""
    z = z.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    best = torch.empty_like(z)
    done = torch.zeros(z.shape[0], dtype=torch.bool)
    for _ in range(max_iters + 1):
        logp = torch.log_softmax(z, -1)
        h = entropy(logp)
        hit = ((h - h_nats).abs() <= tol_nats) & ~done
        if hit.any():
            best[hit] = logp.detach()[hit]
            done |= hit
        if done.all():
            break
        opt.zero_grad(set_to_none=True)
        ((h - h_nats) ** 2).sum().backward()
        opt.step()
    return best, ~done


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


def targets_table(target_ids, kind, requested, achieved, unit, seeds, logprobs: np.ndarray) -> pa.Table:
    n, v = logprobs.shape
    kinds = [kind] * n if isinstance(kind, str) else list(kind)
    flat = pa.array(np.ascontiguousarray(logprobs, dtype=np.float32).reshape(-1))
    return pa.table(
        {
            "target_id": pa.array(list(target_ids), pa.string()),
            "kind": pa.array(kinds, pa.string()),
            "requested_entropy": pa.array(np.asarray(requested, dtype=np.float64)),
            "achieved_entropy": pa.array(np.asarray(achieved, dtype=np.float64)),
            "entropy_unit": pa.array([unit] * n, pa.string()),
            "seed": pa.array(np.asarray(seeds, dtype=np.int64)),
            "vocab_size": pa.array([v] * n, pa.int64()),
            "logprobs": pa.FixedSizeListArray.from_arrays(flat, v),
        }
    )


def pad_rows(table: pa.Table, width: int) -> pa.Table:
    """The target table widened to ``width`` output rows, the added (padding) rows at
    probability 0 (see :mod:`distreach.tokens` for how |V| is counted)."""
    logp = logprobs(table)
    if logp.shape[1] == width:
        return table
    if logp.shape[1] > width:
        raise DistreachError(f"targets over {logp.shape[1]} tokens do not fit {width} output rows")
    out = np.full((table.num_rows, width), -np.inf, dtype=np.float32)
    out[:, : logp.shape[1]] = logp
    flat = pa.array(out.reshape(-1))
    i = table.column_names.index("logprobs")
    table = table.set_column(i, "logprobs", pa.FixedSizeListArray.from_arrays(flat, width))
    j = table.column_names.index("vocab_size")
    return table.set_column(j, "vocab_size", pa.array([width] * table.num_rows, pa.int64()))


def logprobs(table: pa.Table) -> np.ndarray:
    """The ``logprobs`` column of a target table as an [n, |V|] array."""
    col = table.column("logprobs").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, -1)


def read_targets(path, vocab_size: int | None = None) -> tuple[pa.Table, np.ndarray]:
    """Read a target file; check shape and values. Returns (metadata columns, probabilities [n, V])."""
    return target_probs(read_arrow(path), vocab_size, str(path))


def target_probs(table: pa.Table, vocab_size: int | None = None, where: str = "target table") -> tuple[pa.Table, np.ndarray]:
    """Check a target table's shape and values (``where`` names it in messages); returns
    (metadata columns, probabilities [n, V] as float32, rows renormalised to sum to 1)."""
    missing = [c for c in TARGET_COLUMNS if c not in table.column_names]
    if missing:
        raise DistreachError(f"{where}: missing target column(s) {', '.join(missing)}")
    if table.num_rows == 0:
        raise DistreachError(f"{where}: no targets in the file")
    for name, (accepts, as_type) in COLUMN_TYPES.items():  # another tool's types, where they mean the same
        if not accepts(table.schema.field(name).type):
            raise DistreachError(f"{where}: column {name} is {table.schema.field(name).type}, expected {as_type}")
        try:
            table = table.set_column(table.column_names.index(name), name, table.column(name).cast(as_type))
        except pa.ArrowException as exc:  # values out of range of the type
            raise DistreachError(f"{where}: column {name}: {one_line(exc)}") from None
    col = table.column("logprobs").combine_chunks()
    if not (pa.types.is_fixed_size_list(col.type) and pa.types.is_floating(col.type.value_type)):
        raise DistreachError(f"{where}: column logprobs must be a fixed-size list of float32")
    if table.column("target_id").null_count or table.column("entropy_unit").null_count:
        raise DistreachError(f"{where}: columns target_id and entropy_unit must have no nulls")
    units = set(table.column("entropy_unit").to_pylist()) - {"bits", "nats"}
    if units:
        raise DistreachError(f"{where}: column entropy_unit has {sorted(units)[0]!r}, expected bits or nats")
    v = col.type.list_size
    if vocab_size is not None and v != vocab_size:
        raise DistreachError(f"{where}: targets have {v} entries but the model's vocabulary has {vocab_size}")
    logp = logprobs(table).astype(np.float32)
    ids = table.column("target_id").to_pylist()
    bad = ~np.isfinite(logp) & ~(np.isneginf(logp))
    if bad.any():
        raise DistreachError(f"{where}: target {ids[int(bad.any(1).argmax())]} has NaN or +inf log-probabilities")
    probs = np.exp(logp.astype(np.float64))
    sums = probs.sum(1)
    off = np.abs(sums - 1) > 1e-3
    if off.any():
        i = int(off.argmax())
        raise DistreachError(f"{where}: target {ids[i]} sums to {sums[i]:.6f}, not 1")
    drift = np.abs(sums - 1) > 1e-6
    if drift.any():
        log.info("%s: %d target(s) sum to within 1e-3 of 1 (largest gap %.2g); renormalised",
                 where, int(drift.sum()), float(np.abs(sums - 1).max()))
    probs /= sums[:, None]
    return table.drop_columns(["logprobs"]), probs.astype(np.float32)


# A user's target file: .arrow (a target table), .npy (probabilities) or .json ({token: probability}).
TARGET_FORMATS = (".arrow", ".npy", ".json")
RENORMALISE_TOLERANCE = 1e-3  # probabilities summing to 1 within this are renormalised (and logged)


def check_target_path(path: str | os.PathLike) -> Path:
    """The target file's path if it exists, is not empty and has a known format (checked
    before any model is loaded)."""
    path = Path(path)
    if not path.is_file():
        raise DistreachError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DistreachError(f"{path}: the file is empty")
    if path.suffix.lower() not in TARGET_FORMATS:
        raise DistreachError(f"{path}: unknown format {path.suffix or '(none)'}; use .arrow, .npy or .json")
    return path


def read_target(path: str | os.PathLike, loaded, unit: str = "bits") -> pa.Table:
    """A target table from a file, checked against the model's vocabulary:

    - ``.arrow``: a target table (``distreach target`` writes one);
    - ``.npy``: probabilities, shape [|V|] or [n, |V|];
    - ``.json``: ``{"token string": probability}``; tokens not named get 0. Every string must be
      one token of this model (the error names those that are not).

    Errors name the file and what is wrong with its data."""
    path = check_target_path(path)
    suffix = path.suffix.lower()
    if suffix == ".arrow":
        meta, probs = read_targets(path, loaded.vocab_size)  # checked and renormalised; kind, requested
        with np.errstate(divide="ignore"):                   # entropy and family columns kept as they are
            logp = np.log(probs).reshape(-1)
        return meta.append_column("logprobs", pa.FixedSizeListArray.from_arrays(pa.array(logp, pa.float32()), loaded.vocab_size))
    if suffix == ".npy":
        return _npy_target(path, loaded, unit)
    return _json_target(path, loaded, unit)  # check_target_path admits nothing else


def _npy_target(path: Path, loaded, unit: str) -> pa.Table:
    vocab = loaded.vocab_size
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy's value, OS and EOF errors of a corrupt or truncated file
        raise DistreachError(f"{path}: not a plain numeric .npy array ({one_line(exc)})") from None
    if not isinstance(arr, np.ndarray) or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DistreachError(f"{path}: array of {getattr(arr, 'dtype', type(arr).__name__)}, expected real numbers")
    arr = np.atleast_2d(arr.astype(np.float64))
    if arr.ndim != 2 or arr.shape[1] != vocab:
        raise DistreachError(f"{path}: shape {arr.shape}, expected [{vocab}] or [n, {vocab}] for model {loaded.name}")
    probs = np.stack([_finite_probabilities(r, f"{path} row {i}") for i, r in enumerate(arr)])
    return _user_table(probs, [f"{path.stem}-{i}" for i in range(len(probs))], unit)


def _json_target(path: Path, loaded, unit: str) -> pa.Table:
    vocab = loaded.vocab_size
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors; nesting too deep
        raise DistreachError(f"{path}: not valid JSON ({one_line(exc)})") from None
    if not isinstance(data, dict) or not data:
        raise DistreachError(f"{path}: expected a non-empty object {{\"token string\": probability}}")
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DistreachError(f"{path}: token {key!r} has probability {value!r}, not a number")
        if not math.isfinite(value if isinstance(value, float) or abs(value) < 2**1000 else math.inf):
            raise DistreachError(f"{path}: token {key!r} has probability {value} (NaN or infinite)")
        if value < 0:
            raise DistreachError(f"{path}: token {key!r} has a negative probability ({value})")
    ids = token_ids(loaded.tokenizer, list(data), vocab, str(path))
    probs = np.zeros(vocab)
    probs[ids] = [float(v) for v in data.values()]
    if len(set(ids)) != len(ids):
        raise DistreachError(f"{path}: two strings are the same token of {loaded.name}")
    probs = _finite_probabilities(probs, str(path))
    return _user_table(probs[None], [path.stem], unit)


def _finite_probabilities(p: np.ndarray, where: str) -> np.ndarray:
    """Check one probability vector; renormalise a sum within tolerance of 1."""
    if p.size == 0:
        raise DistreachError(f"{where}: no probabilities")
    bad = np.flatnonzero(~np.isfinite(p))
    if bad.size:
        raise DistreachError(f"{where}: entry {bad[0]} is {p[bad[0]]} (NaN or infinite)")
    neg = np.flatnonzero(p < 0)
    if neg.size:
        raise DistreachError(f"{where}: entry {neg[0]} is negative ({p[neg[0]]})")
    total = float(p.sum())
    if abs(total - 1) > RENORMALISE_TOLERANCE:
        raise DistreachError(f"{where}: probabilities sum to {total:.6g}, not 1 (tolerance {RENORMALISE_TOLERANCE})")
    if abs(total - 1) > 1e-9:
        log.info("%s: probabilities sum to %.9g; renormalised", where, total)
    return p / total


def _user_table(probs: np.ndarray, ids: list[str], unit: str, kind: str = "user") -> pa.Table:
    with np.errstate(divide="ignore"):
        logp = np.log(probs.astype(np.float64))
    ent = to_unit(entropy(torch.from_numpy(logp)).numpy(), unit)
    return targets_table(ids, kind, ent, ent, unit, [0] * len(ids), logp.astype(np.float32))


def token_ids(tokenizer, strings: list[str], vocab: int, where: str) -> list[int]:
    """The token id of each string (its exact surface text, leading space included)."""
    from .vocab import surface_forms

    forms = surface_forms(tokenizer, vocab)
    first: dict[str, int] = {}
    for i, s in enumerate(forms):
        if s is not None and s not in first:
            first[s] = i
    missing = [s for s in strings if s not in first]
    if missing:
        shown = ", ".join(repr(s) for s in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DistreachError(f"{where}: {len(missing)} string(s) are not single tokens of this model: {shown}")
    return [first[s] for s in strings]
