"""Experiments as rows: (target x init) rows, split into shards, each tuned and written as Arrow.

The collected table of an experiment has one row per (model, method, target, init)
with the columns in :data:`RESULT_COLUMNS` and provenance columns; information
quantities (entropies, KL) are in the table's ``entropy_unit``.
"""

from __future__ import annotations

import itertools

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from .checkpoint import CHECKPOINT_SECONDS, checkpoint_path
from .engine import STOP_REASONS, TuneConfig, model_of, prompt_kl, tune, tune_groups, tuning_context
from .errors import DistreachError
from .methods import DEFAULT_METHOD
from .units import to_unit
from .io import arrow_metadata, package_versions, with_metadata, write_arrow
from .models import attention_of, auto_dtype, cpu_model, load_materialised, resolve_device
from .seeds import derive_seed
from .targets import TARGET_COLUMNS, read_target_matrix
from .tokens import bos_used

log = logging.getLogger(__name__)



def shard_rows(n_targets: int, inits: int, shard: int, n_shards: int) -> list[tuple[int, int]]:
    """The (target index, init index) rows of one shard: every n_shards-th row of the
    init-major order, so each shard mixes targets of all entropies (easy and hard)
    and shards take about the same time."""
    if not 0 <= shard < n_shards:
        raise DistreachError(f"shard {shard} is outside 0..{n_shards - 1}")
    rows = [(t, i) for i in range(inits) for t in range(n_targets)]
    return sorted(rows[shard::n_shards])


@dataclass(frozen=True)
class Shard:
    """One experiment's shard in a tuning job: its targets (``meta``: the target columns,
    ``probs``: [n, |V|], as :func:`distreach.targets.read_target_matrix` returns them), its inits,
    which shard of its rows (:func:`shard_rows`), and its method (the name its table's ``method``
    column gives) and tuning settings."""

    experiment: str
    meta: pa.Table
    probs: np.ndarray
    inits: int
    shard: int = 0
    n_shards: int = 1
    method: str = DEFAULT_METHOD
    tuning: TuneConfig = TuneConfig()


def run_shard(
    *,
    model_dir: str | None,
    targets_path: str,
    out_path: str,
    experiment: str,
    method: str,
    tuning: TuneConfig,
    inits: int,
    shard: int,
    n_shards: int,
    seed: int = 0,
    dtype: str = "fp32",
    device: str = "auto",
    threads: int | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    loaded=None,
    progress=None,
) -> pa.Table:
    """Tune one shard of one experiment on one model and write it atomically to ``out_path``
    (:func:`run_job` with one shard)."""
    one = {"experiment": experiment, "targets": targets_path, "out": out_path, "inits": inits, "shard": shard,
           "n_shards": n_shards, "method": method, "tuning": tuning}
    return run_job(model_dir=model_dir, shards=[one], seed=seed, dtype=dtype,
                   device=device, threads=threads, checkpoint=checkpoint_path(out_path),
                   checkpoint_seconds=checkpoint_seconds, loaded=loaded, progress=progress)[0]


def run_job(
    *,
    model_dir: str | None,
    shards: list[dict],
    checkpoint: str | Path,
    seed: int = 0,
    dtype: str = "fp32",
    device: str = "auto",
    threads: int | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    keep_checkpoint: bool = False,
    loaded=None,
    progress=None,
) -> list[pa.Table]:
    """Tune the shards of several experiments and methods on one model in the same batches
    (:func:`tune_shards`), and write each one's table atomically.

    ``shards``: dicts with ``experiment``, ``targets`` (target file), ``out`` (table to
    write), ``inits``, ``shard``, ``n_shards``, ``method`` (its name in the table) and
    ``tuning`` (a TuneConfig). The model is loaded from ``model_dir`` in
    ``dtype`` on ``device`` unless ``loaded`` (a LoadedModel, or its
    :class:`distreach.engine.TuningContext` under the shards' settings) is given. The tuning state is
    checkpointed to ``checkpoint`` every ``checkpoint_seconds``, so a killed job started again
    resumes (bit-identical on the CPU); the checkpoint is removed once every table is written
    (unless ``keep_checkpoint``: a caller that publishes the tables later removes it then)."""
    if threads:
        torch.set_num_threads(int(threads))
    if loaded is None:
        device = resolve_device(device)
        loaded, _ = load_materialised(model_dir, dtype=auto_dtype(device) if dtype == "auto" else dtype, device=device)
    parts, read = [], {}
    for m in shards:
        if m["targets"] not in read:  # an experiment's methods read its targets once
            read[m["targets"]] = read_target_matrix(m["targets"], model_of(loaded).vocab_size)
        meta, probs = read[m["targets"]]
        parts.append(Shard(m["experiment"], meta, probs, m["inits"], m.get("shard", 0), m.get("n_shards", 1),
                           m["method"], m["tuning"]))
    tables = tune_shards(loaded, parts, seed=seed, checkpoint=checkpoint, checkpoint_seconds=checkpoint_seconds,
                         progress=progress)
    for table, m in zip(tables, shards):
        write_arrow(table, m["out"])
    if not keep_checkpoint:
        Path(checkpoint).unlink(missing_ok=True)
    return tables


def write_shard(table: pa.Table, out_path) -> None:
    """Write a table of :func:`tune_rows` atomically and remove its checkpoint."""
    write_arrow(table, out_path)
    checkpoint_path(out_path).unlink(missing_ok=True)


def tune_rows(
    loaded,
    meta: pa.Table,
    probs: np.ndarray,
    *,
    experiment: str,
    method: str,
    tuning: TuneConfig,
    inits: int,
    shard: int = 0,
    n_shards: int = 1,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    progress=None,
) -> pa.Table:
    """The result table of one shard of one experiment (:func:`tune_shards` with one shard)."""
    one = Shard(experiment, meta, probs, inits, shard, n_shards, method, tuning)
    return tune_shards(loaded, [one], seed=seed, checkpoint=checkpoint, checkpoint_seconds=checkpoint_seconds,
                       progress=progress)[0]


def tune_shards(
    loaded,
    shards: list[Shard],
    *,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    progress=None,
) -> list[pa.Table]:
    """One result table per shard: the (target, init) rows of its :func:`shard_rows`, all
    shards' rows tuned together on ``loaded`` (rows never interact: a row's result is the one
    it gets alone up to float rounding, :mod:`distreach.engine`), with provenance in the schema metadata
    (:func:`distreach.io.arrow_metadata`). The shards share their tuning settings, or differ only in
    which positions are soft (:func:`distreach.engine.tune_groups`: soft, hybrid and hard prompts
    of one length). ``loaded`` is a LoadedModel or its
    :class:`distreach.engine.TuningContext` under the shards' settings: the BOS token, the allowed tokens,
    the device and the dtype are resolved once and every step below (the fp32 retry included)
    uses them.

    No file is written but the engine's ``checkpoint``, and none is read but that and, for an
    fp32 retry, the model's folder: rows whose KL becomes NaN or inf in a low-precision dtype are
    tuned again on the model loaded from its folder in fp32 (their ``dtype`` column says so,
    ``retry`` says why, and their ``kl_roundtrip`` is that model's); rows that fail in fp32 too
    get a ``failed: ...`` status and a NaN ``kl_min``, so they never reach a figure as a number.
    ``progress(step, active)`` is called after every step of every batch. The provenance's
    ``work`` is the engine's record of the call (:attr:`distreach.engine.TuneResult.work`), fp32
    retries' work added, the same in every shard's table."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    if not shards:
        return []
    ctx = tuning_context(loaded, shards[0].tuning)
    loaded = ctx.loaded
    plans = _plan_rows(ctx, shards, seed)

    def on_step(step, active):
        if step % 25 == 0 or active == 0:
            log.info("step %d: %d rows still tuning", step, active)
        if progress is not None:
            progress(step, active)

    probs = [m.probs[[t for t, _ in rows]] for m, rows, _ in plans]
    args = dict(on_step=on_step, checkpoint=checkpoint, checkpoint_seconds=checkpoint_seconds)
    if len({repr(m.tuning) for m in shards}) == 1:  # one setting (any method, gcg too): one tune call, split by shard
        res = tune(ctx, np.concatenate(probs), [s for _, _, seeds in plans for s in seeds], shards[0].tuning, **args)
        bounds = np.cumsum([0] + [len(rows) for _, rows, _ in plans])
        results = [res.take(slice(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
    else:
        results = tune_groups(ctx, [(p, seeds, m.tuning) for p, (m, _, seeds) in zip(probs, plans)], **args)
    retries, ctx32 = [], None
    for (m, _, shard_seeds), res, p in zip(plans, results, probs):  # every retry first: the work they add is the call's
        row_dtype, retry, ctx32 = _retry_in_fp32(ctx, res, p, shard_seeds, m.tuning, ctx32)
        retries.append((row_dtype, retry))
    tables = []
    for (m, rows, shard_seeds), res, p, (row_dtype, retry) in zip(plans, results, probs, retries):
        # a retried row's prompt typed back in runs on the model it was tuned on: the fp32 one
        hard = hard_prompt_columns(ctx, m.tuning, res, p, on=[ctx if r is None else ctx32 for r in retry])
        columns = {
            "experiment": pa.array([m.experiment] * len(rows), pa.string()),
            "model": pa.array([loaded.name] * len(rows), pa.string()),
            "method": pa.array([m.method] * len(rows), pa.string()),
        }
        table = _result_table(columns, ctx, m.meta, rows, shard_seeds, m.tuning, res, p, row_dtype, retry, hard,
                              m.shard)
        ran = {d: ctx32 if d == "fp32" and ctx32 is not None else ctx for d in row_dtype}  # this shard's rows' dtypes
        tables.append(with_metadata(table, _provenance(ctx, m, shards, seed, res.work, ran)))
    return tables


def _plan_rows(ctx, shards: list[Shard], seed: int) -> list[tuple]:
    """(shard, its (target, init) rows, their init seeds) for each shard."""
    plans = []
    for m in shards:
        rows = shard_rows(m.meta.num_rows, m.inits, m.shard, m.n_shards)
        tids = m.meta.column("target_id").to_pylist()
        # init seeds name only the target and the init: every method, prefix length and experiment on a
        # target starts from the same tokens (paired comparisons)
        plans.append((m, rows, [derive_seed(seed, "init", tids[t], i) for t, i in rows]))
        log.info("shard %d/%d of %s on %s: %d rows, %s on %s", m.shard, m.n_shards, m.experiment, ctx.loaded.name,
                 len(rows), ctx.dtype, ctx.device)
    return plans


def _provenance(ctx, m: Shard, shards: list[Shard], seed: int, work: dict, ran: dict) -> dict:
    """The provenance of shard ``m``'s table (its schema metadata); ``ran``: the context of each
    dtype its rows ran in (their ``dtype`` column; fp32 for rows retried in it), whose attention
    implementations ``attention`` names (``ctx``'s alone for a shard with no rows)."""
    return {
        "experiment": m.experiment,
        "model": ctx.loaded.manifest,
        # the model and family the target file was made for (a random_init model's may be its
        # base's: distreach.jobs.target_model); {} for targets without that provenance
        "targets": {k: v for k, v in arrow_metadata(m.meta).items() if k in ("model", "family")},
        "tuning": asdict(m.tuning),
        "inits": m.inits,
        "seed": seed,
        "shard": [m.shard, m.n_shards],
        "tuned_with": [f"{other.experiment}@{other.method}" for other in shards],
        "work": work,
        "dtype": ctx.dtype,
        "device": str(ctx.device),
        "attention": {d: attention_of(c.loaded) for d, c in (ran or {ctx.dtype: ctx}).items()},
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "packages": package_versions(),
    }


def _retry_in_fp32(ctx, res, probs, seeds, tuning: TuneConfig, ctx32=None) -> tuple[list, list, object]:
    """Tune the rows of ``res`` whose KL became NaN or inf again in fp32 (in place), on the
    model loaded in fp32 with ``ctx``'s BOS token and allowed tokens (``ctx32`` where an earlier
    retry loaded it), and mark the rows that still fail; each row's dtype, why it was retried
    (or None), and the fp32 context (``ctx32`` without a retry)."""
    dtype = ctx.dtype
    row_dtype, retry = [dtype] * len(res), [None] * len(res)
    bad = [i for i, s in enumerate(res.status) if s != "ok"]
    if bad and dtype != "fp32" and ctx.loaded.folder is not None:
        log.warning("%d rows had a non-finite KL in %s: tuning them again in fp32", len(bad), dtype)
        if ctx32 is None:
            ctx32 = ctx.with_weights(load_materialised(ctx.loaded.folder, dtype="fp32", device=str(ctx.device))[0])
        again = tune(ctx32, probs[bad], [seeds[i] for i in bad], tuning)
        for key in ("row_steps", "batch_rows", "candidates"):  # the work the retry adds (gcg's candidates too)
            if key in res.work:
                res.work[key] = res.work[key] + again.work[key]
        for j, i in enumerate(bad):
            retry[i] = f"{res.status[i]} in {dtype}"
            row_dtype[i] = "fp32"
            for name in ("kl_min", "q_entropy", "best_step", "steps", "early_stopped", "stop_reason", "best_soft",
                         "best_ids", "q_on_p_top", "q_top_ids", "q_top_probs"):
                getattr(res, name)[i] = getattr(again, name)[j]
            res.status[i] = again.status[j]
    for i, s in enumerate(res.status):
        if s != "ok":
            res.status[i] = f"failed: {s}" + (f" (in fp32 too, after {retry[i]})" if retry[i] else "")
            res.kl_min[i] = np.nan
            res.q_entropy[i] = np.nan
    return row_dtype, retry, ctx32


def _result_table(columns: dict, ctx, meta, rows, seeds, tuning, res, probs, row_dtype, retry, hard,
                  shard) -> pa.Table:
    """The columns of :data:`distreach.tables.RESULT_COLUMNS` and provenance columns, after
    ``columns`` (experiment, model, method); ``hard``: the rows' :func:`hard_prompt_columns`."""
    pick = [t for t, _ in rows]
    unit = meta.column("entropy_unit")[0].as_py()
    manifest, bos_id = ctx.loaded.manifest, ctx.bos_id
    n = len(rows)

    def col(name):
        return meta.column(name).take(pa.array(pick, pa.int64()))

    return pa.table(
        {
            **columns,
            "target_kind": col("kind"),
            "target_id": col("target_id"),
            "target_entropy": col("requested_entropy"),
            "target_entropy_achieved": col("achieved_entropy"),
            "entropy_unit": pa.array([unit] * n, pa.string()),
            "target_seed": col("seed"),
            "init_index": pa.array([i for _, i in rows], pa.int64()),
            "init_seed": pa.array(seeds, pa.int64()),
            "init_ids": pa.array(res.init_ids.tolist(), pa.list_(pa.int64())),
            "prefix_len": pa.array([tuning.prefix_len] * n, pa.int64()),
            "n_soft": pa.array([tuning.n_soft_positions] * n, pa.int64()),
            "kl_min": pa.array(to_unit(res.kl_min, unit), pa.float64()),
            "q_entropy": pa.array(to_unit(res.q_entropy, unit), pa.float64()),
            "best_step": pa.array(res.best_step, pa.int64()),
            "steps": pa.array(res.steps, pa.int64()),
            "early_stopped": pa.array(res.early_stopped, pa.bool_()),
            "stop_reason": pa.array([STOP_REASONS[i] for i in res.stop_reason], pa.string()),
            "status": pa.array(res.status, pa.string()),
            "prompt_ids": pa.array(hard["ids"], pa.list_(pa.int64())),
            "prompt_text": pa.array(hard["text"], pa.string()),
            "kl_roundtrip": pa.array(to_unit(np.asarray(hard["kl_roundtrip"], dtype=float), unit), pa.float64()),
            **top_token_columns(res, probs),
            **soft_prompt_columns(tuning, res),
            "shard": pa.array([shard] * n, pa.int64()),
            "bos": pa.array([bos_used(bos_id)] * n, pa.string()),
            "bos_policy": pa.array([tuning.bos] * n, pa.string()),
            "bos_token_id": pa.array([bos_id] * n, pa.int64()),
            "dtype": pa.array(row_dtype, pa.string()),
            "retry": pa.array(retry, pa.string()),
            "device": pa.array([str(ctx.device)] * n, pa.string()),
            "model_source": pa.array([json.dumps(manifest["source"], sort_keys=True)] * n, pa.string()),
            "model_sha256": pa.array([manifest["weights_sha256"]] * n, pa.string()),
            # family-specific target columns (n_outliers, outlier_mass, source_model, kept_mass, ...)
            **{name: col(name) for name in meta.column_names if name not in TARGET_COLUMNS},
        }
    )


def _lists(values: list[np.ndarray], dtype: pa.DataType) -> pa.Array:
    """A list column of 1-d arrays (row i holds ``values[i]``), built without Python lists per value."""
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
    flat = np.concatenate(values) if values else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=dtype))


def top_token_columns(res, probs: np.ndarray) -> dict:
    """What each row's target asked for and what the model gave at the row's best step: the
    target's most probable tokens (those with probability > 0; at most ``top_k``) with their
    probabilities under p and under q, and q's own most probable tokens."""
    keep = [p[ids] > 0 for p, ids in zip(probs, res.p_top_ids)]
    p_top = [ids[k] for ids, k in zip(res.p_top_ids, keep)]
    return {
        "p_top_ids": _lists(p_top, pa.int64()),
        "p_top_probs": _lists([p[ids] for p, ids in zip(probs, p_top)], pa.float32()),
        "q_on_p_top": _lists([q[k] for q, k in zip(res.q_on_p_top, keep)], pa.float32()),
        "q_top_ids": _lists(list(res.q_top_ids), pa.int64()),
        "q_top_probs": _lists(list(res.q_top_probs), pa.float32()),
    }


def soft_prompt_columns(tuning: TuneConfig, res) -> dict:
    """Each row's best prompt's soft positions (empty for a hard prompt) and their embeddings at
    the step of ``kl_min`` (float32, position after position: ``len(soft_positions) x d``
    values), the inputs :mod:`distreach.prompts` feeds back to the model."""
    positions = [i for i, soft in enumerate(tuning.soft_mask) if soft]
    soft = np.asarray(res.best_soft, dtype=np.float32)
    flat = soft.reshape(len(res), soft.shape[1] * soft.shape[2])
    return {
        "soft_positions": pa.array([positions] * len(res), pa.list_(pa.int64())),
        "soft_prompt": _lists(list(flat), pa.float32()),
    }


def hard_prompt_columns(ctx, tuning: TuneConfig, res, probs, on: list | None = None) -> dict:
    """Token ids and text of each row's best prompt (soft positions shown as ``<soft>``), and for
    pure hard prompts the KL after a decode -> re-encode round trip (NaN otherwise).
    ``ctx``: the tuning's :class:`distreach.engine.TuningContext` (its BOS token), or a LoadedModel
    (the BOS token of ``tuning.bos`` is resolved then, for pure hard prompts only); ``on``: per row,
    the context (or model) whose forward gives the round-trip KL (default ``ctx``)."""
    tok = model_of(ctx).tokenizer
    n = len(res)
    if tuning.n_soft_positions == tuning.prefix_len:
        return {"ids": [[] for _ in range(n)], "text": [""] * n, "kl_roundtrip": [float("nan")] * n}
    mask = tuning.soft_mask
    ids = [[int(i) for i in row] for row in res.best_ids]
    texts = []
    for row in ids:  # a run of hard positions is decoded as a whole: its text as typed
        it = iter(row)
        pieces = [("<soft>" * len(list(run)) if soft else tok.decode([next(it) for _ in run]))
                  for soft, run in itertools.groupby(mask)]
        texts.append("".join(pieces))
    kl_rt = np.full(n, np.nan)
    if tuning.n_soft_positions == 0:
        retyped = [tok(text, add_special_tokens=False).input_ids for text in texts]
        groups = {}  # the rows of each context they run on
        for i, c in enumerate([ctx] * n if on is None else on):
            groups.setdefault(id(c), (c, []))[1].append(i)
        for c, rows in groups.values():
            kl_rt[rows] = prompt_kl(c, np.asarray(probs)[rows], [retyped[i] for i in rows], tuning.bos)
    return {"ids": ids, "text": texts, "kl_roundtrip": kl_rt.tolist()}
