"""Snakemake entry point: the JavaScript of the run's offline HTML pages (distreach.offline.write_vega_bundle)."""

import _repo  # first: this checkout's distreach under --sdm conda

from distreach.offline import write_vega_bundle

with _repo.step_log(snakemake.log[0]):
    write_vega_bundle(snakemake.output[0])
    print(f"vega-embed bundle written to {snakemake.output[0]}")
