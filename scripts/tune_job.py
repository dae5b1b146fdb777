"""Snakemake entry point: one tuning job, shard k of the experiments and methods it tunes together
(distreach.tuning.run_job), written as one folder of tables, one per experiment and method."""

import _repo  # first: this checkout's distreach under --sdm conda

from pathlib import Path

from distreach.jobs import table_path
from distreach.checkpoint import checkpoint_path
from distreach.io import atomic_path
from distreach.models import resolve_device, reuse_freed_memory
from distreach.settings import tuning_config
from distreach.tuning import run_job

with _repo.step_log(snakemake.log[0]):
    reuse_freed_memory(resolve_device(snakemake.params.device))  # this process tunes: large tensors reuse freed memory
    job = snakemake.params.job
    out = Path(snakemake.output[0])
    checkpoint = checkpoint_path(out)
    with atomic_path(out, is_dir=True) as folder:
        shards = [
            {**shard, "targets": targets, "out": table_path(folder, shard["experiment"], shard["method"]),
             "tuning": tuning_config(shard["tuning"])}
            for shard, targets in zip(job["shards"], snakemake.input.targets)
        ]
        tables = run_job(
            model_dir=snakemake.input.model,
            shards=shards,
            checkpoint=checkpoint,
            seed=snakemake.params.seed,
            dtype=snakemake.params.dtype,
            device=snakemake.params.device,
            threads=snakemake.threads,
            checkpoint_seconds=snakemake.config["checkpoint_seconds"],  # a schema default; not a rerun trigger
            keep_checkpoint=True,
        )
    checkpoint.unlink(missing_ok=True)  # only once the folder is in place
    print(f"{sum(t.num_rows for t in tables)} rows tuned for {len(tables)} experiment(s) and method(s)")
