rule collect:
    """Concatenate an experiment's shards into one Arrow table."""
    input:
        experiment_shards,
    output:
        FIGURE_FILES["tables"].format("{experiment}"),
    log:
        "logs/collect/{experiment}.log",
    conda:
        "../envs/figures.yaml"
    params:
        tables=experiment_tables,
        code=script_code("collect"),
    script:
        "../scripts/collect.py"
