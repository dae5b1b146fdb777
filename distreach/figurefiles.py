"""The file of each thing a figure reads (:func:`distreach.figureregistry.figure_reads`), by name, and
the files of the figures and of the claims report: the rules that write them (collect, pos_tag,
next_token, figure, claims) take their outputs from here, and the figures', the claims report's and
the targets' inputs and benchmarks/figure_jobs.py and gpu_check.py their paths. A module of its
own, which no job's script reaches: editing it reruns no job for its code, but a changed path moves
where those rules write, so their tables are made again there."""

FIGURE_FILES = {
    "tables": "results/collected/{}.arrow",
    "pos": "results/pos/{}.arrow",
    "nexttoken": "results/nexttoken/{}.arrow",
}

# a figure's files (FIGURE_EXTENSIONS; fig = figNN, the paper's figure number) and the claims report's
FIGURE = "results/figures/{fig}.{ext}"
FIGURE_EXTENSIONS = ("html", "png", "svg")
CLAIMS_REPORT = "results/report/claims.{ext}"
