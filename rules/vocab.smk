rule vocab:
    """One model's vocabulary as a table: surface text, leading space, special and English flags."""
    input:
        model="results/models/{model}",
    output:
        "results/vocab/{model}.arrow",
    params:
        code=library_code("vocab", "io"),
    log:
        "logs/vocab/{model}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/vocab.py"


rule pos_tag:
    """Part of speech of every English token of one model's vocabulary (paper App. C)."""
    input:
        vocab="results/vocab/{model}.arrow",
    output:
        "results/pos/{model}.arrow",
    params:
        settings=config["pos"],
        code=library_code("pos", "io"),
    log:
        "logs/pos/{model}.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/pos.yaml"
    script:
        "../scripts/pos_tag.py"
