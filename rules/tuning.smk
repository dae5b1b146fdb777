rule tune_shard:
    """Tune one shard of an experiment's (target x init) rows on one model."""
    input:
        model="results/models/{model}",
        targets=experiment_targets,
    output:
        "results/tuning/{experiment}/{model}/{method}/shard-{shard}.arrow",
    params:
        tuning=tuning_settings,
        experiment=experiment_spec,
        seed=config["seed"],
        dtype=config["dtype"],
        device=config["device"],
        code=library_code("engine", "shards", "models", "targets", "infotheory"),
    log:
        "logs/tuning/{experiment}/{model}/{method}/shard-{shard}.log",
    threads: tuning_threads
    resources:
        gpu=1,
        mem_mb=8000,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/tune_shard.py"
