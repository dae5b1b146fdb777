"""Snakemake entry point: a model's vocabulary table (distreach.models.write_vocab)."""

import _repo  # first: this checkout's distreach under --sdm conda

from distreach.models import write_vocab

with _repo.step_log(snakemake.log[0]):
    df = write_vocab(snakemake.input.model, snakemake.output[0])
    print(f"{df.height} tokens, {df['is_english'].sum()} English, {df['is_special'].sum()} special")
