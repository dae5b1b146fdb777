"""Snakemake entry point: a model's vocabulary table (distreach.models.write_vocab)."""

import _repo  # noqa: F401  (this checkout's distreach under --sdm conda)

from distreach.io import logging_to
from distreach.models import write_vocab

with logging_to(snakemake.log[0]):
    df = write_vocab(snakemake.input.model, snakemake.output[0])
    print(f"{df.height} tokens, {df['is_english'].sum()} English, {df['is_special'].sum()} special")
