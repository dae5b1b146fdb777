"""Snakemake entry point: concatenate an experiment's shards (distreach.tables.collect)."""

import _repo  # first: this checkout's distreach under --sdm conda

from distreach.jobs import table_path
from distreach.tables import collect

with _repo.step_log(snakemake.log[0]):
    # each input is a tuning job's folder, holding one table per experiment it tuned
    shards = [table_path(folder, snakemake.wildcards.experiment) for folder in snakemake.input]
    df = collect(shards, snakemake.output[0])
    print(f"{df.height} rows from {len(shards)} shards")
