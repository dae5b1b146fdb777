rule twin_model:
    """A tiny random twin of a paper model (distreach.twins): same transformers class and
    special-token layout, tokenizer trained on the fly; config twins.<name>."""
    output:
        directory("results/twins/{twin}"),
    log:
        "logs/twins/{twin}.log",
    conda:
        "../envs/torch.yaml"
    params:
        spec=twin_spec,
        code=script_code("make_twin"),
    script:
        "../scripts/make_twin.py"


rule materialise_model:
    """Write a configured model once as a local safetensors folder with its tokenizer."""
    input:
        base=model_base,
        twin=model_twin,
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
