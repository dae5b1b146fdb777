rule vanilla_targets:
    """Vanilla targets (paper Eq. 1) over one model's vocabulary, the whole entropy grid."""
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
        "../scripts/vanilla_targets.py"
