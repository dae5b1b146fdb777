rule vocab:
    """One model's vocabulary as a table: surface text, leading space, special and English flags."""
    input:
        model="results/models/{model}",
    output:
        "results/vocab/{model}.arrow",
    log:
        "logs/vocab/{model}.log",
    priority: PREP_PRIORITY
    conda:
        "../envs/torch.yaml"
    params:
        code=script_code("vocab"),
    script:
        "../scripts/vocab.py"


rule pos_tag:
    """Part of speech of every English token of one model's vocabulary (paper App. C)."""
    input:
        vocab="results/vocab/{model}.arrow",
    output:
        "results/pos/{model}.arrow",
    log:
        "logs/pos/{model}.log",
    priority: PREP_PRIORITY
    conda:
        "../envs/pos.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        settings=config["pos"],
        code=script_code("pos_tag"),
    script:
        "../scripts/pos_tag.py"
