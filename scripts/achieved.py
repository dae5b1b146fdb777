"""Snakemake entry point: the report's target-vs-achieved figure for a few rows of Fig. 1
(distreach.figures.achieved_rows, target_vs_achieved)."""

import _repo  # first: this checkout's distreach under --sdm conda

from distreach.figures import achieved_rows, save, target_vs_achieved
from distreach.offline import read_vega_bundle
from distreach.tables import read_tables, tables_by_model
from distreach.vocab import with_token_texts

with _repo.step_log(snakemake.log[0]):
    rows = achieved_rows(read_tables(snakemake.input.tables))
    vocabs = tables_by_model(snakemake.input.vocab)
    bundle = read_vega_bundle(snakemake.input.bundle)
    save(target_vs_achieved(with_token_texts(rows, vocabs)), snakemake.output.html.removesuffix(".html"), bundle)
    print(f"target vs achieved for {rows.height} rows")
