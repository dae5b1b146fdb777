"""Snakemake entry point: one tuning job, shard k of the experiments it tunes together
(distreach.shards.run_bundle), written as one folder of per-experiment tables."""

import _repo  # first: this checkout's distreach under --sdm conda

from pathlib import Path

from distreach.bundles import table_path
from distreach.io import atomic_path
from distreach.shards import run_bundle, tuning_config

with _repo.step_log(snakemake.log[0]):
    job = snakemake.params.job
    out = Path(snakemake.output[0])
    checkpoint = out.with_name(f".{out.name}.ckpt")
    with atomic_path(out, is_dir=True) as folder:
        members = [
            {**member, "targets": targets, "out": table_path(folder, member["experiment"])}
            for member, targets in zip(job["members"], snakemake.input.targets)
        ]
        tables = run_bundle(
            model_dir=snakemake.input.model,
            members=members,
            method=job["method"],
            tuning=tuning_config(job["tuning"]),
            checkpoint=checkpoint,
            seed=snakemake.params.seed,
            dtype=snakemake.params.dtype,
            device=snakemake.params.device,
            threads=snakemake.threads,
            checkpoint_seconds=snakemake.config["checkpoint_seconds"],  # a schema default; not a rerun trigger
            keep_checkpoint=True,
        )
    checkpoint.unlink(missing_ok=True)  # only once the folder is in place
    print(f"{sum(t.num_rows for t in tables)} rows tuned for {len(tables)} experiment(s)")
