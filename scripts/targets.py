"""Snakemake entry point: one target family for one model's vocabulary (distreach.targets)."""

import torch

from distreach.io import logging_to, write_arrow
from distreach.models import read_manifest
from distreach.targets import family_targets

with logging_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    settings = snakemake.params.settings
    manifest = read_manifest(snakemake.input.model)
    table = family_targets(settings, manifest["vocab_size"], snakemake.params.unit, snakemake.params.seed)
    write_arrow(table, snakemake.output[0], {"model": manifest["name"], "family": snakemake.wildcards.family, "settings": settings})
    print(f"{table.num_rows} {settings['kind']} targets for {manifest['name']} (|V| = {manifest['vocab_size']})")
