rule pos_tag:
    """Part of speech of every English token of one model's vocabulary (paper App. C)."""
    input:
        vocab=rules.materialise_model.output.vocab,
    output:
        FIGURE_FILES["pos"].format("{model}"),
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
