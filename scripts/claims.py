"""Snakemake entry point: the claims report (distreach.claims)."""

import _repo  # first: this checkout's distreach under --sdm conda

from distreach import claims
from distreach.tables import read_tables

with _repo.step_log(snakemake.log[0]):
    table = claims.check(read_tables(snakemake.input.tables), snakemake.params.figures)
    claims.write_report(table, snakemake.output.md, snakemake.output.html, snakemake.output.table)
    print(claims.to_markdown(table))
