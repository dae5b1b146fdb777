"""Snakemake entry point: paper Fig. 5 (distreach.figures.fig05)."""

import polars as pl

from distreach import figures
from distreach.io import logging_to

with logging_to(snakemake.log[0]):
    chart = figures.fig05(pl.read_ipc(snakemake.input.table, memory_map=False), snakemake.params.model)
    figures.save(chart, snakemake.output.html.removesuffix(".html"))
