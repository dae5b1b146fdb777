"""Snakemake entry point: one of the paper's figures (distreach.figureregistry, distreach.figures.draw)."""

import _repo  # first: this checkout's distreach under --sdm conda

from distreach import figures
from distreach.offline import read_vega_bundle

with _repo.step_log(snakemake.log[0]):
    inputs = {name: list(files) for name, files in snakemake.input.items() if name != "bundle"}
    bundle = read_vega_bundle(snakemake.input.bundle)
    figures.draw(snakemake.wildcards.fig, inputs, snakemake.params.spec, snakemake.output.html.removesuffix(".html"), bundle)
