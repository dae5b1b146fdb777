"""Snakemake entry point: the claims report (distreach.claims)."""

import _repo  # noqa: F401  (this checkout's distreach under --sdm conda)

from distreach import claims
from distreach.io import logging_to
from distreach.tables import read_tables

with logging_to(snakemake.log[0]):
    table = claims.check(read_tables(snakemake.input.tables), snakemake.params.figures)
    claims.write_report(table, snakemake.output.md, snakemake.output.html, snakemake.output.table)
    print(claims.to_markdown(table))
