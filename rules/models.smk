rule materialise_model:
    """Write a configured model once as a local safetensors folder with its tokenizer (a
    stand-in source is built here, a random_init one from its base's folder)."""
    input:
        base=model_base,
    output:
        directory("results/models/{model}"),
    log:
        "logs/models/{model}.log",
    priority: PREP_PRIORITY
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=model_mem_mb,
        runtime=30,
    params:
        spec=model_spec,
        code=script_code("materialise_model"),
    script:
        "../scripts/materialise_model.py"
