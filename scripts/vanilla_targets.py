"""Snakemake entry point: vanilla targets (paper Eq. 1) for one model's vocabulary."""

import torch

from distreach.io import logging_to, write_arrow
from distreach.models import read_manifest
from distreach.targets import EntropyGrid, VanillaSettings, vanilla_targets

with logging_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    s = snakemake.params.settings
    manifest = read_manifest(snakemake.input.model)
    grid = EntropyGrid(unit=snakemake.params.unit, **s["grid"])
    settings = VanillaSettings(
        per_level=s["per_level"],
        tolerance=s["tolerance"],
        max_iters=s["max_iters"],
        lr=s["lr"],
        seed=snakemake.params.seed,
    )
    table = vanilla_targets(manifest["vocab_size"], grid, settings)
    write_arrow(table, snakemake.output[0], {"model": manifest["name"], "grid": s["grid"], "settings": s})
    print(f"{table.num_rows} vanilla targets for {manifest['name']} (|V| = {manifest['vocab_size']})")
