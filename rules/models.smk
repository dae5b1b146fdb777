rule materialise_model:
    """Write a configured model once as a local safetensors folder with its tokenizer."""
    input:
        base=model_base,
    output:
        directory("results/models/{model}"),
    log:
        "logs/models/{model}.log",
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
