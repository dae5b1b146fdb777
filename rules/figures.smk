rule figure:
    """One of the paper's figures: what it shows, reads and says in its caption is its entry in
    distreach.figreg.FIGURES; distreach.figures.DRAW[fig] draws it."""
    input:
        unpack(figure_inputs),
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/figure.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="|".join(figreg.FIGURES),
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        caption=figure_caption,
        code=script_code("figure"),
    script:
        "../scripts/figure.py"
