from snakemake.utils import min_version

min_version("9.0")


# config.yaml where no --configfile is given; files given replace it (and merge in their order).
# Snakemake starts a cluster's jobs with the --configfile files but without
# --replace-workflow-config: read this way, every job reads the config the run was planned with.
if not workflow.overwrite_configfiles:

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
