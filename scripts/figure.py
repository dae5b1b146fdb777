"""Snakemake entry point: one of the paper's figures (distreach.figreg, distreach.figures.draw)."""

import _repo  # noqa: F401  (this checkout's distreach under --sdm conda)

from distreach import figures
from distreach.io import logging_to

with logging_to(snakemake.log[0]):
    inputs = {name: list(files) for name, files in snakemake.input.items()}
    figures.draw(snakemake.wildcards.fig, inputs, snakemake.params.spec, snakemake.output.html.removesuffix(".html"))
