"""Target tables: distributions over a model's vocabulary, stored as Arrow files.

A target file has one row per target: ``target_id, kind, requested_entropy,
achieved_entropy, entropy_unit, seed, vocab_size`` and ``logprobs``, the
log-probabilities as a float32 fixed-size list of length |V|. Vanilla targets (Eq. 1) are
made by :mod:`distreach.vanilla`, the other families by :mod:`distreach.families`, targets
from a user's file by :mod:`distreach.targetfiles`.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pyarrow as pa

from .errors import DistreachError, one_line
from .units import UNITS
from .io import arrow_metadata, read_arrow

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

RENORMALISE_TOLERANCE = 1e-3  # probabilities summing to 1 within this are renormalised (and logged)


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


def read_target_matrix(path, vocab_size: int | None = None) -> tuple[pa.Table, np.ndarray]:
    """Read a target file; check shape and values. Returns (metadata columns, probabilities [n, V])."""
    return target_probs(read_arrow(path), vocab_size, str(path))


def target_probs(table: pa.Table, vocab_size: int | None = None, where: str = "target table") -> tuple[pa.Table, np.ndarray]:
    """Check a target table's shape and values (``where`` names it in messages); returns
    (metadata columns, probabilities [n, V] as float32, rows renormalised to sum to 1)."""
    missing = [c for c in TARGET_COLUMNS if c not in table.column_names]
    if missing and "kl_min" in table.column_names:
        raise DistreachError(f"{where}: a result table (of a tuning), not a target table: a target table comes from "
                             "distreach target, or the workflow's results/targets/<family>/<model>.arrow")
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
    units = set(table.column("entropy_unit").to_pylist()) - set(UNITS)
    if units:
        raise DistreachError(f"{where}: column entropy_unit has {sorted(units)[0]!r}, expected bits or nats")
    v = col.type.list_size
    if vocab_size is not None and v != vocab_size:
        made = arrow_metadata(table).get("model")
        raise DistreachError(f"{where}: targets have {v} entries but the model's vocabulary has {vocab_size}"
                             + (f" (the file's targets were made for model {made})" if isinstance(made, str) else ""))
    ids = table.column("target_id").to_pylist()
    if again := next(((i, n) for i, n in Counter(ids).items() if n > 1), None):
        raise DistreachError(f"{where}: target id {again[0]!r} is given {again[1]} times (results are kept and compared "
                             "by target id)")
    logp = logprobs(table).astype(np.float32)
    bad = ~np.isfinite(logp) & ~(np.isneginf(logp))
    if bad.any():
        raise DistreachError(f"{where}: target {ids[int(bad.any(1).argmax())]} has NaN or +inf log-probabilities")
    probs = np.exp(logp.astype(np.float64))
    sums = probs.sum(1)
    off = np.abs(sums - 1) > RENORMALISE_TOLERANCE
    if off.any():
        i = int(off.argmax())
        raise DistreachError(f"{where}: target {ids[i]} sums to {sums[i]:.6f}, not 1")
    drift = np.abs(sums - 1) > 1e-6
    if drift.any():
        log.info("%s: %d target(s) sum to within 1e-3 of 1 (largest gap %.2g); renormalised",
                 where, int(drift.sum()), float(np.abs(sums - 1).max()))
    probs /= sums[:, None]
    return table.drop_columns(["logprobs"]), probs.astype(np.float32)
