rule tune_job:
    """A tuning job (distreach.jobs): shard k of each experiment and method it holds (one, or
    with share_jobs those on one model whose rows the engine tunes in one batch), tuned
    together; one table per experiment and method in the job's folder."""
    input:
        model=rules.materialise_model.output.model,
        targets=tuning_targets,
    output:
        directory(job_folder("{model}/{job}/shard-{shard}")),
    log:
        "logs/tuning/{model}/{job}/shard-{shard}.log",
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
        code=script_code("tune_job"),
    script:
        "../scripts/tune_job.py"
