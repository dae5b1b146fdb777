"""Snakemake entry point: one tiny twin of a paper model (distreach.twins.write_twin)."""

import _repo  # first: this checkout's distreach under --sdm conda

from distreach.twins import write_twin

with _repo.step_log(snakemake.log[0]):
    spec = snakemake.params.spec
    write_twin(spec["arch"], snakemake.output[0], int(spec.get("seed", 0)))
    print(f"twin {snakemake.wildcards.twin}: {spec['arch']} written to {snakemake.output[0]}")
