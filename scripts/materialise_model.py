"""Snakemake entry point: materialise one configured model (distreach.models.materialise)."""

import _repo  # first: this checkout's distreach under --sdm conda

import torch

from distreach.models import ModelSpec, materialise

with _repo.step_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    spec = ModelSpec.from_config(snakemake.wildcards.model, snakemake.params.spec)
    base = str(snakemake.input.base) if snakemake.input.base else None
    manifest = materialise(spec, snakemake.output.model, base_dir=base, vocab_out=snakemake.output.vocab)
    print(f"materialised {spec.name}: {manifest['architecture']}, |V| = {manifest['vocab_size']}")
