"""The file of each thing a figure reads (:func:`distreach.figureregistry.figure_reads`), by name, as
the workflow's rules write them: for the rules' figure inputs and for benchmarks/figure_jobs.py. A
module of its own, which no job's script reaches, so that editing it reruns no job."""

FIGURE_FILES = {
    "tables": "results/collected/{}.arrow",
    "pos": "results/pos/{}.arrow",
    "nexttoken": "results/nexttoken/{}.arrow",
}
