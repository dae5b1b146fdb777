"""Snakemake entry point: paper Fig. 9 (distreach.figures.fig09)."""

import _repo  # noqa: F401  (this checkout's distreach under --sdm conda)

from distreach import figures
from distreach.io import logging_to

with logging_to(snakemake.log[0]):
    chart = figures.fig09(figures.read_tables(snakemake.input.tables), snakemake.params.spec["model"])
    figures.save(chart, snakemake.output.html.removesuffix(".html"))
