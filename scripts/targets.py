"""Snakemake entry point: one target family for one model's vocabulary (distreach.targetfamily.make_family)."""

import _repo  # first: this checkout's distreach under --sdm conda

import torch

from distreach.errors import about
from distreach.targetfamily import make_family
from distreach.io import write_arrow

with _repo.step_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    settings = snakemake.params.settings
    with about(f"targets.{snakemake.wildcards.family} on model {snakemake.wildcards.model}:"):
        table = make_family(
            settings,
            snakemake.input.model,
            snakemake.params.unit,
            snakemake.params.seed,
            base=snakemake.input.get("base"),
            source_dir=snakemake.input.get("source"),
            bos=snakemake.params.bos,
            vocab_file=snakemake.input.get("vocab"),
            source_vocab_file=snakemake.input.get("source_vocab"),
        )
    meta = {"model": snakemake.wildcards.model, "family": snakemake.wildcards.family, "settings": settings}
    write_arrow(table, snakemake.output[0], meta)
    print(f"{table.num_rows} {settings['kind']} targets for {snakemake.wildcards.model}")
