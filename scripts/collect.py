"""Snakemake entry point: concatenate an experiment's shards (distreach.tables.collect)."""

import _repo  # first: this checkout's distreach under --sdm conda

from distreach.tables import collect

with _repo.step_log(snakemake.log[0]):
    # the inputs are tuning jobs' folders, holding one table per experiment and method they tuned
    shards = snakemake.params.tables
    df = collect(shards, snakemake.output[0])
    print(f"{df.height} rows from {len(shards)} shards")
