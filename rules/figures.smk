rule vega_bundle:
    """The JavaScript that makes the figures' HTML pages (and the achieved figure's) open with
    no network (Vega, Vega-Lite and vega-embed: distreach.offline.vega_bundle), bundled once per
    results folder instead of in each of those jobs; made again when altair or vl-convert change.
    """
    output:
        VEGA_BUNDLE,
    log:
        "logs/figures/vega-embed.log",
    conda:
        "../envs/figures.yaml"
    params:
        made_by=installed_versions("altair", "vl-convert-python"),
        code=script_code("vega_bundle"),
    script:
        "../scripts/vega_bundle.py"


rule next_token:
    """Fig. 3's distributions on one model (distreach.nexttoken): its next-token distribution
    after the text of figures.fig03, an Eq. 1 target of the same entropy and what a soft prompt
    tuned on that target produces."""
    input:
        model=rules.materialise_model.output.model,
    output:
        FIGURE_FILES["nexttoken"].format("{model}"),
    log:
        "logs/nexttoken/{model}.log",
    conda:
        "../envs/torch.yaml"
    threads: tuning_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=30,
        cpus_per_task=tuning_cpus,
    params:
        spec=next_token_spec,
        unit=config["entropy_unit"],
        seed=config["seed"],
        tuning=next_token_tuning,
        dtype=config["dtype"],
        device=config["device"],
        code=script_code("next_token"),
    script:
        "../scripts/next_token.py"


rule figure:
    """One of the paper's figures: what it shows, reads and says in its caption is its entry in
    distreach.figureregistry.FIGURES; distreach.figures.DRAW[fig] draws it."""
    input:
        unpack(figure_inputs),
        bundle=VEGA_BUNDLE,
    output:
        html=FIGURE.format(fig="{fig}", ext="html"),
        png=report(
            FIGURE.format(fig="{fig}", ext="png"),
            caption="../report/figure.rst",
            category="Figures",
        ),
        svg=FIGURE.format(fig="{fig}", ext="svg"),
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="|".join(figureregistry.FIGURES),
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        caption=figure_caption,
        code=script_code("figure"),
    script:
        "../scripts/figure.py"


rule not_drawn:
    """A figure of the paper that is not drawn from data (distreach.figureregistry.NOT_DRAWN):
    planning stops, saying why and which figures are drawn."""
    input:
        not_drawn,
    output:
        FIGURE,
    log:
        "logs/figures/{fig}.{ext}.log",
    wildcard_constraints:
        fig="|".join(figureregistry.NOT_DRAWN),
        ext="|".join(rules.figure.output.keys()),
    localrule: True
