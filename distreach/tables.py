"""Result tables: collect shards, read tables, and the shapes figures and claims take of them
(the minimum over inits, over shuffled copies; the target a derived target was made from).
Needs no torch and draws nothing.

A collected table has one row per (model, method, target, init) with at least
:data:`RESULT_COLUMNS`; information quantities are in its ``entropy_unit``."""

from __future__ import annotations

from pathlib import Path

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


def read_tables(paths, with_model: bool = False) -> pl.DataFrame:
    """Arrow tables (collected, POS or next-token tables), concatenated (a column missing from one
    table is null there); no paths, an empty frame. ``with_model``: add each table's ``model``
    (from its provenance, else the file name), which a POS table does not hold. A missing or
    unreadable file is a one-line DistreachError."""
    frames = []
    for path in paths:
        table = read_arrow(path)
        frame = pl.from_arrow(table)
        if with_model:
            frame = frame.with_columns(model=pl.lit(_model(table, path)))
        frames.append(frame)
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def tables_by_model(paths) -> dict[str, pl.DataFrame]:
    """Each Arrow table of ``paths`` (one per model: vocabulary tables, say) by its model, as
    :func:`read_tables` names it; a missing or unreadable file is a one-line DistreachError."""
    out = {}
    for path in paths:
        table = read_arrow(path)
        out[_model(table, path)] = pl.from_arrow(table)
    return out


def _model(table, path) -> str:
    """A table's model: from its provenance, else the file name."""
    return arrow_metadata(table).get("model") or Path(path).stem


DERIVED_KINDS = ("matched", "shuffled")  # target kinds made from another target (``source_target_id``)


def source_ids(df: pl.DataFrame) -> pl.Expr:
    """Each row's source: for a derived target (:data:`DERIVED_KINDS`) the target it was made
    from (``source_target_id``), for any other target its own ``target_id``. Rows of derived
    targets without a source (a table written before the column existed) are a DistreachError."""
    derived = df.filter(pl.col("target_kind").is_in(DERIVED_KINDS))
    if derived.height and ("source_target_id" not in df.columns or derived["source_target_id"].null_count()):
        raise DistreachError("results: matched or shuffled targets without source_target_id (tuned before that column "
                             "was written; make their targets and tune them again)")
    if "source_target_id" not in df.columns:
        return pl.col("target_id")
    return pl.when(pl.col("target_kind").is_in(DERIVED_KINDS)).then(pl.col("source_target_id")).otherwise(pl.col("target_id"))


def min_over_shuffles(best: pl.DataFrame) -> pl.DataFrame:
    """One row per LM target for its shuffled copies, under the LM target's id: the copy with the
    lowest minimum KL (paper Fig. 9: the minimum loss across shuffled variants)."""
    shuf = best.filter(pl.col("target_kind") == "shuffled")
    return (
        shuf.with_columns(target_id=source_ids(shuf))
        .sort("kl_min", "target_id")
        .group_by("model", "method", "target_id", maintain_order=True)
        .first()
        .sort("target_id")
    )
