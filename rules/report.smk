rule claims:
    """The paper's findings C1-C9 re-tested on this run's tables (distreach.claims): on
    the data of the figures that the figure registry (distreach.figureregistry) says each is
    tested on."""
    input:
        tables=expand(
            FIGURE_FILES["tables"].format("{experiment}"),
            experiment=figureregistry.tested_experiments(config),
        ),
    output:
        md=report(
            CLAIMS_REPORT.format(ext="md"),
            caption="../report/claims.rst",
            category="Claims",
        ),
        html=CLAIMS_REPORT.format(ext="html"),
        table=CLAIMS_REPORT.format(ext="arrow"),
    log:
        "logs/report/claims.log",
    conda:
        "../envs/figures.yaml"
    params:
        figures=figureregistry.tested_figures(FIGURES),
        code=script_code("claims"),
    script:
        "../scripts/claims.py"


rule achieved:
    """Target against achieved for a few rows of Fig. 1 (distreach.figures.achieved_rows): the
    target's most probable tokens, q on them at the best step, and q's own."""
    input:
        unpack(achieved_inputs),
        bundle=VEGA_BUNDLE,
    output:
        html="results/report/achieved.html",
        png=report(
            "results/report/achieved.png",
            caption="../report/achieved.rst",
            category="Claims",
        ),
        svg="results/report/achieved.svg",
    log:
        "logs/report/achieved.log",
    conda:
        "../envs/figures.yaml"
    params:
        code=script_code("achieved"),
    script:
        "../scripts/achieved.py"
