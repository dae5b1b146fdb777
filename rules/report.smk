rule claims:
    """The paper's findings C1-C9 re-tested on this run's tables (distreach.claims)."""
    input:
        tables=expand(
            "results/collected/{experiment}.arrow", experiment=config["experiments"]
        ),
    output:
        md=report(
            "results/report/claims.md",
            caption="../report/claims.rst",
            category="Claims",
        ),
        html="results/report/claims.html",
        table="results/report/claims.arrow",
    log:
        "logs/report/claims.log",
    conda:
        "../envs/figures.yaml"
    params:
        figures=FIGURES,
        code=script_code("claims"),
    script:
        "../scripts/claims.py"
