"""Snakemake entry point: concatenate an experiment's shards (distreach.shards.collect)."""

import _repo  # noqa: F401  (this checkout's distreach under --sdm conda)

from distreach.io import logging_to
from distreach.tables import collect

with logging_to(snakemake.log[0]):
    df = collect(list(snakemake.input), snakemake.output[0])
    print(f"{df.height} rows from {len(snakemake.input)} shards")
