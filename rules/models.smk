rule materialise_model:
    """Write a configured model once as a local safetensors folder with its tokenizer."""
    input:
        base=model_base,
    output:
        directory("results/models/{model}"),
    params:
        spec=model_spec,
        code=library_code("models", "io"),
    log:
        "logs/models/{model}.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=8000,
    script:
        "../scripts/materialise_model.py"
