"""Snakemake entry point: POS tags of a vocabulary's English tokens (distreach.pos.pos_table)."""

import _repo  # first: this checkout's distreach under --sdm conda

from distreach.pos import write_pos

with _repo.step_log(snakemake.log[0]):
    df = write_pos(snakemake.input.vocab, snakemake.output[0], **snakemake.params.settings)
    print(f"{df.height} English tokens, {df['kept'].sum()} with one unambiguous POS")
    print(df.filter("kept")["pos"].value_counts(sort=True).head(8))
