"""The file of each thing a figure reads (:func:`distreach.figureregistry.figure_reads`), by name: the
rules that write them (collect, pos_tag, next_token) take their outputs from here, and the figures',
the claims report's and the targets' inputs and benchmarks/figure_jobs.py and gpu_check.py their
paths. A module of its own, which no job's script reaches: editing it reruns no job for its code,
but a changed path moves where those rules write, so their tables are made again there."""

FIGURE_FILES = {
    "tables": "results/collected/{}.arrow",
    "pos": "results/pos/{}.arrow",
    "nexttoken": "results/nexttoken/{}.arrow",
}
