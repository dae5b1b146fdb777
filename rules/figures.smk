rule fig01:
    """Paper Fig. 1: minimum KL vs target entropy, one line per model."""
    input:
        table=figure_table,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig01.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    params:
        code=library_code("figures", "tables"),
    wildcard_constraints:
        fig="fig01",
    log:
        "logs/figures/{fig}.log",
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/fig01.py"


rule fig05:
    """Paper Fig. 5: minimum KL and achieved entropy vs target entropy on one model."""
    input:
        table=figure_table,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig05.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    params:
        model=config["figures"].get("fig05", {}).get("model"),
        code=library_code("figures", "tables"),
    wildcard_constraints:
        fig="fig05",
    log:
        "logs/figures/{fig}.log",
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/fig05.py"
