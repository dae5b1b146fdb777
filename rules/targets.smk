rule targets:
    """A target family over one model's vocabulary (kinds: schemas/config.schema.yaml)."""
    input:
        unpack(target_inputs),
    output:
        "results/targets/{family}/{model}.arrow",
    log:
        "logs/targets/{family}/{model}.log",
    priority: PREP_PRIORITY
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=model_mem_mb,
        runtime=30,
    params:
        settings=target_settings,
        unit=config["entropy_unit"],
        seed=config["seed"],
        bos=config.get("tuning", {}).get("bos", "auto"),
        code=script_code("targets"),
    script:
        "../scripts/targets.py"
