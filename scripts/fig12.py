"""Snakemake entry point: paper Fig. 12 (distreach.figures.fig12)."""

import _repo  # noqa: F401  (this checkout's distreach under --sdm conda)

from distreach import figures
from distreach.io import logging_to

with logging_to(snakemake.log[0]):
    pos = figures.read_pos_tables(snakemake.input.pos)
    chart = figures.fig12(pos, snakemake.params.spec.get("top", 8))
    figures.save(chart, snakemake.output.html.removesuffix(".html"))
