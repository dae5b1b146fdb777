"""Snakemake entry point: paper Fig. 11 (distreach.figures.fig11)."""

import _repo  # noqa: F401  (this checkout's distreach under --sdm conda)

from distreach import figures
from distreach.io import logging_to

with logging_to(snakemake.log[0]):
    chart = figures.fig11(figures.read_tables(snakemake.input.tables), snakemake.params.spec["model"])
    figures.save(chart, snakemake.output.html.removesuffix(".html"))
