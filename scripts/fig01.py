"""Snakemake entry point: paper Fig. 1 (distreach.figures.fig01)."""

import polars as pl

from distreach import figures
from distreach.io import logging_to

with logging_to(snakemake.log[0]):
    chart = figures.fig01(pl.read_ipc(snakemake.input.table, memory_map=False))
    figures.save(chart, snakemake.output.html.removesuffix(".html"))
