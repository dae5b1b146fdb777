"""Snakemake entry point: tune one shard (distreach.shards.run_shard)."""

import _repo  # noqa: F401  (this checkout's distreach under --sdm conda)

from distreach.io import logging_to
from distreach.shards import run_shard, tuning_config

with logging_to(snakemake.log[0]):
    exp = snakemake.params.experiment
    table = run_shard(
        model_dir=snakemake.input.model,
        targets_path=snakemake.input.targets,
        out_path=snakemake.output[0],
        experiment=snakemake.wildcards.experiment,
        method=snakemake.wildcards.method,
        tuning=tuning_config(snakemake.params.tuning),
        inits=exp["inits"],
        shard=int(snakemake.wildcards.shard),
        n_shards=exp["shards"],
        seed=snakemake.params.seed,
        dtype=snakemake.params.dtype,
        device=snakemake.params.device,
        threads=snakemake.threads,
        checkpoint_seconds=snakemake.config.get("checkpoint_seconds", 60),  # not a rerun trigger
    )
    print(f"{table.num_rows} rows tuned")
