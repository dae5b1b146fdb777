rule targets:
    """A target family over one model's vocabulary (vanilla: paper Eq. 1 on the entropy grid)."""
    input:
        model="results/models/{model}",
    output:
        "results/targets/{family}/{model}.arrow",
    params:
        settings=target_settings,
        unit=config["entropy_unit"],
        seed=config["seed"],
        code=library_code("targets", "infotheory"),
    log:
        "logs/targets/{family}/{model}.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=4000,
    script:
        "../scripts/targets.py"
