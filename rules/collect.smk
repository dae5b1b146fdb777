rule collect:
    """Concatenate an experiment's shards into one Arrow table."""
    input:
        experiment_shards,
    output:
        "results/collected/{experiment}.arrow",
    params:
        code=library_code("tables"),
    log:
        "logs/collect/{experiment}.log",
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/collect.py"
