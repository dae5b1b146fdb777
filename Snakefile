from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/pos.smk"
include: "rules/targets.smk"
include: "rules/tuning.smk"
include: "rules/collect.smk"
include: "rules/figures.smk"
include: "rules/report.smk"


report: "report/workflow.rst"


rule all:
    default_target: True
    input:
        all_outputs(),
