rule materialise_model:
    """Write a configured model once as a local safetensors folder with its tokenizer (a
    stand-in source is built here, a random_init one from its base's folder), and its
    vocabulary as a table: per token id the surface text, leading space, special, English and
    usable flags (one job, so the table is always that of the tokenizer written beside it;
    deleting the table alone writes the model again)."""
    input:
        base=model_base,
        source=model_source_files,
    output:
        model=directory("results/models/{model}"),
        vocab="results/vocab/{model}.arrow",
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
