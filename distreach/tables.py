"""Result tables: collect shards, pick the minimum over inits. Needs no torch.

A collected table has one row per (model, method, target, init) with at least
:data:`RESULT_COLUMNS`; information quantities are in its ``entropy_unit``."""

from __future__ import annotations

import polars as pl

from .errors import DistreachError
from .io import arrow_metadata, package_versions, read_arrow, write_arrow

RESULT_COLUMNS = (
    "experiment",
    "model",
    "method",
    "target_kind",
    "target_id",
    "target_entropy",
    "entropy_unit",
    "init_seed",
    "init_ids",
    "prefix_len",
    "n_soft",
    "kl_min",
    "q_entropy",
    "steps",
    "early_stopped",
    "stop_reason",
)


def collect(shard_paths: list[str], out_path: str) -> pl.DataFrame:
    """Concatenate shard tables into one, sorted, and write it atomically."""
    if not shard_paths:
        raise DistreachError("collect: no shard files given")
    tables = [read_arrow(p) for p in shard_paths]
    df = pl.concat([pl.from_arrow(t) for t in tables], how="vertical")
    df = df.sort(["model", "method", "target_id", "init_index"])
    provenance = {str(p): arrow_metadata(t) for p, t in zip(shard_paths, tables)}
    write_arrow(df.to_arrow(), out_path, {"shards": provenance, "packages": package_versions()})
    return df


def min_over_inits(df: pl.DataFrame) -> pl.DataFrame:
    """One row per (model, method, target): the init with the lowest kl_min (paper: min over inits)."""
    keys = ["experiment", "model", "method", "prefix_len", "n_soft", "target_kind", "target_id"]
    ok = df.filter(pl.col("status") == "ok")
    return ok.sort("kl_min").group_by(keys, maintain_order=True).first().sort(keys)
