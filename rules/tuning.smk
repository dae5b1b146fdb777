rule tune_shard:
    """Tune one shard of an experiment's (target x init) rows on one model."""
    input:
        model="results/models/{model}",
        targets=experiment_targets,
    output:
        "results/tuning/{experiment}/{model}/{method}/shard-{shard}.arrow",
    log:
        "logs/tuning/{experiment}/{model}/{method}/shard-{shard}.log",
    conda:
        "../envs/torch.yaml"
    threads: tuning_threads
    resources:
        gpu=1,
        mem_mb=model_mem_mb,
        runtime=model_runtime,
        cpus_per_task=tuning_cpus,
    params:
        tuning=tuning_settings,
        experiment=experiment_spec,
        seed=config["seed"],
        dtype=config["dtype"],
        device=config["device"],
        code=script_code("tune_shard"),
    script:
        "../scripts/tune_shard.py"
