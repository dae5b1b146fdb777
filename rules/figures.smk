rule fig01:
    """Paper Fig. 1: minimum KL vs target entropy, one line per model."""
    input:
        tables=figure_tables,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig01.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="fig01",
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        code=library_code("figures", "tables"),
    script:
        "../scripts/fig01.py"


rule fig04:
    """Paper Fig. 4: minimum KL vs target entropy for hard, hybrid and soft prompts on one model."""
    input:
        tables=figure_tables,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig04.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="fig04",
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        code=library_code("figures", "tables"),
    script:
        "../scripts/fig04.py"


rule fig05:
    """Paper Fig. 5: minimum KL and achieved entropy vs target entropy on one model."""
    input:
        tables=figure_tables,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig05.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="fig05",
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        code=library_code("figures", "tables"),
    script:
        "../scripts/fig05.py"


rule fig06:
    """Paper Fig. 6: pretrained models against their randomly initialised twins."""
    input:
        tables=figure_tables,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig06.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="fig06",
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        code=library_code("figures", "tables"),
    script:
        "../scripts/fig06.py"


rule fig11:
    """Paper Fig. 11: soft-prompt minimum KL vs target entropy for several prefix lengths."""
    input:
        tables=figure_tables,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig11.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="fig11",
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        code=library_code("figures", "tables"),
    script:
        "../scripts/fig11.py"


rule fig07:
    """Paper Fig. 7: soft prompts on outlier targets against vanilla targets of the same entropy."""
    input:
        tables=figure_tables,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig07.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="fig07",
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        code=library_code("figures", "tables"),
    script:
        "../scripts/fig07.py"


rule fig08:
    """Paper Fig. 8: hard prompts on LM-generated targets against matched vanilla targets."""
    input:
        tables=figure_tables,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig08.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="fig08",
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        code=library_code("figures", "tables"),
    script:
        "../scripts/fig08.py"


rule fig09:
    """Paper Fig. 9: soft prompts on LM-generated, shuffled and matched vanilla targets."""
    input:
        tables=figure_tables,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig09.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="fig09",
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        code=library_code("figures", "tables"),
    script:
        "../scripts/fig09.py"


rule fig10:
    """Paper Fig. 10: soft prompts on targets migrated from another model's vocabulary."""
    input:
        tables=figure_tables,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig10.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="fig10",
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        code=library_code("figures", "tables"),
    script:
        "../scripts/fig10.py"


rule fig12:
    """Paper Fig. 12: POS distribution of the English tokens of each model's vocabulary."""
    input:
        pos=figure_pos_tables,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig12.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="fig12",
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        code=library_code("figures"),
    script:
        "../scripts/fig12.py"


rule fig13:
    """Paper Fig. 13: soft-prompt minimum KL on POS-uniform targets, base and instruct side by side."""
    input:
        tables=figure_tables,
    output:
        html="results/figures/{fig}.html",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/fig13.rst",
            category="Figures",
        ),
        svg="results/figures/{fig}.svg",
    log:
        "logs/figures/{fig}.log",
    wildcard_constraints:
        fig="fig13",
    conda:
        "../envs/figures.yaml"
    params:
        spec=figure_spec,
        code=library_code("figures", "tables"),
    script:
        "../scripts/fig13.py"
