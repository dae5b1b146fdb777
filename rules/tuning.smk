rule tune_shard:
    """Tune shard k of the experiments that share a model, method and tuning settings, in one
    batch (distreach.bundles); one table per experiment."""
    input:
        model="results/models/{model}",
        targets=tuning_targets,
    output:
        directory("results/tuning/{model}/{bundle}/shard-{shard}"),
    log:
        "logs/tuning/{model}/{bundle}/shard-{shard}.log",
    priority: tuning_priority
    conda:
        "../envs/torch.yaml"
    threads: tuning_threads
    resources:
        gpu=1,
        mem_mb=model_mem_mb,
        runtime=model_runtime,
        cpus_per_task=tuning_cpus,
    params:
        job=tuning_job,
        seed=config["seed"],
        dtype=config["dtype"],
        device=config["device"],
        code=script_code("tune_shard"),
    script:
        "../scripts/tune_shard.py"
