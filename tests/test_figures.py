"""The figure registry: every registered figure has a drawing function and a config schema entry,
and the experiments a figure reads come from one helper; figures read the data as the paper does."""

from __future__ import annotations

import copy
import html
import re
from pathlib import Path

import polars as pl
import pytest
import yaml

from distreach import figureregistry, figures, offline, tables
from distreach.config import config_schema

REPO = Path(__file__).resolve().parents[1]


def test_every_figure_is_registered_drawn_and_configurable():
    schema = config_schema(REPO / "schemas/config.schema.yaml")
    assert set(figures.DRAW) == set(figureregistry.FIGURES) == set(schema["properties"]["figures"]["properties"])
    # the schema file's own part of the figures section is kept
    assert schema["properties"]["figures"]["description"].startswith("which experiments each figure draws")
    # every caption names its paper figure and what a band, bar, box or point stands for
    spread = ("standard error", "t-interval", "quartiles", "one point per target", "single inits", "shares per model",
              "one line per distribution")
    for fig, entry in figureregistry.FIGURES.items():
        assert entry.caption.endswith(f"(paper Fig. {int(fig[3:])}).") and any(s in entry.caption for s in spread), fig


def test_figure_inputs():
    assert figureregistry.figure_experiments({"experiment": "a", "model": "m"}) == ["a"]
    assert figureregistry.figure_experiments({"experiments": ["a", "b"]}) == ["a", "b"]
    assert figureregistry.figure_experiments({"models": ["m"]}) == []
    assert figureregistry.figure_reads("fig05", {"experiment": "a", "model": "m"}) == ("tables", ["a"])
    assert figureregistry.figure_reads("fig12", {"models": ["m", "n"]}) == ("pos", ["m", "n"])
    assert figureregistry.figure_reads("fig03", {"model": "m", "text": "I love"}) == ("nexttoken", ["m"])


def best_rows(items, **extra):
    return pl.DataFrame([dict(model="m", method="soft", target_entropy=3.0, entropy_unit="bits", **extra, **it) for it in items])


def test_fig09_takes_the_minimum_over_each_targets_shuffled_copies():
    best = best_rows([
        dict(target_kind="lm", target_id="lm-0000", kl_min=0.1),
        dict(target_kind="shuffled", target_id="lm-0000-shuffled0", source_target_id="lm-0000", kl_min=2.0),
        dict(target_kind="shuffled", target_id="lm-0000-shuffled1", source_target_id="lm-0000", kl_min=1.0),
        dict(target_kind="shuffled", target_id="lm-0001-shuffled0", source_target_id="lm-0001", kl_min=0.5),
        dict(target_kind="shuffled", target_id="lm-0001-shuffled1", source_target_id="lm-0001", kl_min=3.0),
    ])
    got = tables.min_over_shuffles(best)
    assert got.select("target_id", "kl_min").rows() == [("lm-0000", 1.0), ("lm-0001", 0.5)]


def test_fig10_has_one_matched_series_per_source_model():
    best = best_rows([
        dict(target_kind="migrated", target_id="migrated-a-lm-0000", source_model="a", source_target_id=None, kl_min=0.1),
        dict(target_kind="migrated", target_id="migrated-b-lm-0000", source_model="b", source_target_id=None, kl_min=0.2),
        dict(target_kind="matched", target_id="matched-migrated-a-lm-0000", source_model=None,
             source_target_id="migrated-a-lm-0000", kl_min=1.0),
        dict(target_kind="matched", target_id="matched-migrated-b-lm-0000", source_model=None,
             source_target_id="migrated-b-lm-0000", kl_min=2.0),
    ])
    got = dict(figures.migrated_series(best).select("target_id", "targets").iter_rows())
    assert got["matched-migrated-a-lm-0000"] == "matched to migrated from a"
    assert got["matched-migrated-b-lm-0000"] == "matched to migrated from b"
    assert got["migrated-b-lm-0000"] == "migrated from b"


AXIS = re.compile(r"aria-label=\"([XY])-axis titled '(.*?)' for a (\w+) scale with values from (\S+) to ([^\"]+)\"")


def svg_problems(svg: str) -> list[str]:
    """What makes an SVG figure hard to read at a glance: a label Vega cut short (it ends the
    text with an ellipsis) and a KL axis reaching below 0 (KL is never negative)."""
    problems = [f"label cut short: {html.unescape(t)!r}" for t in re.findall(r"<text[^>]*>(.*?)</text>", svg, re.S)
                if "…" in html.unescape(t)]
    for axis, title, _, low, _ in AXIS.findall(svg):
        if "KL" in title and float(html.unescape(low).replace("\u2212", "-").replace(",", "")) < 0:
            problems.append(f"{axis} axis {title!r} starts at {low}")
    return problems


def lm_table(kinds: dict[str, list[float]], **extra) -> pl.DataFrame:
    """Result rows of one model (the columns min_over_inits needs), one per target, KL by kind."""
    rows = []
    for kind, kls in kinds.items():
        for i, kl in enumerate(kls):
            rows.append(dict(experiment="e", model="a-model", method="soft", prefix_len=5, n_soft=5, target_kind=kind,
                             target_id=f"{kind}-{i:04d}", init_index=0, status="ok", kl_min=kl,
                             target_entropy=5.0 + i, q_entropy=5.0 + i, entropy_unit="bits",
                             **{k: v(kind, i) for k, v in extra.items()}))
    return pl.DataFrame(rows)


# least-squares lines that fall below 0 inside the data's range, and legend labels longer than
# Vega-Lite's default limit of 160 px
FALLING = [3.0, 0.1, 0.05, 0.02, 0.01, 0.0]


def test_fit_figures_show_whole_labels_and_kl_from_0(tmp_path):
    fig09 = lm_table({"lm": FALLING, "matched": [2.0, 2.5, 3.0, 2.0, 2.2, 2.4], "shuffled": FALLING})
    fig09 = fig09.with_columns(target_id=pl.when(pl.col("target_kind") == "shuffled")
                               .then(pl.col("target_id").str.replace("shuffled", "lm") + "-shuffled0")
                               .otherwise(pl.col("target_id")),
                               source_target_id=pl.col("target_id").str.replace("^(shuffled|matched)", "lm"))
    source = lambda kind, i: "a-source-model-with-a-long-name" if kind == "migrated" else None  # noqa: E731
    fig10 = lm_table({"migrated": FALLING, "matched": [2.0, 2.5, 3.0, 2.0, 2.2, 2.4]}, source_model=source)
    fig10 = fig10.with_columns(target_id=pl.when(pl.col("target_kind") == "matched")
                               .then(pl.col("target_id").str.replace("matched", "matched-migrated"))
                               .otherwise(pl.col("target_id")),
                               source_target_id=pl.col("target_id").str.replace("matched", "migrated"))
    for fig, data in (("fig09", fig09), ("fig10", fig10)):
        figures.save(figures.DRAW[fig](data, {"model": "a-model"}), tmp_path / fig)
        svg = (tmp_path / f"{fig}.svg").read_text()
        assert "(R² = " in svg, fig
        assert AXIS.search(svg), "no axis descriptions in the SVG"
        assert svg_problems(svg) == [], fig
        # the entropy axis fits the data (5 to 10 bits), not 0 to 10
        lows = {title: low for _, title, _, low, _ in AXIS.findall(svg) if "entropy" in title}
        assert lows and all(float(low) >= 4 for low in lows.values()), lows
        # fit lines that leave the plot (below KL 0) are cut at its edge, not drawn over the axis
        spec = figures.DRAW[fig](data, {"model": "a-model"}).to_dict()
        marks = [layer["mark"] for layer in _layers(spec) if "transform" in layer
                 and any("regression" in t for t in layer["transform"])]
        assert marks and all(m["clip"] is True for m in marks), marks


def test_a_page_from_the_runs_bundle_is_altairs_own_offline_page(tmp_path, caplog, monkeypatch):
    """The figure jobs hand save() the bundle the workflow made once: the HTML is byte for byte
    the page of altair's inline=True, and nothing is bundled again; a bundle made by other
    versions is not used."""
    import vl_convert

    chart = figures.fig01(pl.DataFrame([dict(experiment="e", model="m", method="soft", prefix_len=5, n_soft=5, target_kind="vanilla",
                                             target_id=f"v{h}", target_entropy=float(h), entropy_unit="bits",
                                             kl_min=0.1 * h, status="ok", init_index=0) for h in range(3)]),
                          {"experiment": "e"})
    figures.save(chart, tmp_path / "own")
    offline.write_vega_bundle(tmp_path / "lib/vega-embed.js")
    bundle = offline.read_vega_bundle(tmp_path / "lib/vega-embed.js")
    with monkeypatch.context() as m:
        m.setattr(vl_convert, "javascript_bundle", lambda **kw: pytest.fail("bundled again"))
        figures.save(chart, tmp_path / "made-once", bundle)
    assert bundle.encode() in (tmp_path / "own.html").read_bytes()
    for ext in (".html", ".png", ".svg"):
        assert (tmp_path / f"made-once{ext}").read_bytes() == (tmp_path / f"own{ext}").read_bytes()
    stale = tmp_path / "stale.js"
    stale.write_text("// distreach: bundle of vl-convert 0.1, Vega-Lite v1\n" + bundle)
    assert offline.read_vega_bundle(stale) is None and "made by other versions (vl-convert 0.1, Vega-Lite v1)" in caplog.text
    # the bundle's own line ends survive the file
    monkeypatch.setattr(offline, "vega_bundle", lambda: "a\r\nb\rc\n")
    offline.write_vega_bundle(tmp_path / "ends.js")
    assert offline.read_vega_bundle(tmp_path / "ends.js") == "a\r\nb\rc\n"


def test_a_figure_job_loads_scipy_only_for_a_t_interval():
    """scipy.stats takes a large share of a figure job's start: distreach.figures (and the bundle's
    module) load without it, and a figure with t-intervals (summarise at a level)
    loads it when it draws them (Figs. 5 and 7)."""
    import subprocess
    import sys

    code = ("import sys, polars as pl, distreach.figures as f, distreach.offline; print('scipy' in sys.modules); "
            "f.summarise(pl.DataFrame({'g': [1, 1], 'v': [1.0, 2.0]}), 'v', ['g'], level=0.95); print('scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def _layers(spec: dict):
    """Every unit spec of a (layered, concatenated or faceted) Vega-Lite spec."""
    for key in ("layer", "hconcat", "vconcat", "concat"):
        for sub in spec.get(key, []):
            yield from _layers(sub)
    if "spec" in spec:
        yield from _layers(spec["spec"])
    if "mark" in spec:
        yield spec


def test_svg_problems_are_found():
    cut = '<text x="1">shuffled (min over copies) (R² = 0…</text>'
    axis = "aria-label=\"Y-axis titled 'min KL(p‖q) over inits (bits)' for a linear scale with values from \u22121 to 9\""
    assert svg_problems(f"<svg><g {axis}>{cut}</g></svg>") == [
        "label cut short: 'shuffled (min over copies) (R² = 0…'", "Y axis 'min KL(p‖q) over inits (bits)' starts at \u22121"]
    assert svg_problems("<svg><text>1 &amp; 2</text></svg>") == []


def planned_jobs(workdir: Path, config: dict, targets: set[str]) -> list:
    """The jobs Snakemake plans for ``targets`` (a dry run in this process, so that what the
    test registered is what the workflow sees)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=REPO / "Snakefile", workdir=workdir,
                                config_settings=ConfigSettings(configfiles=[workdir / "config.yaml"]))
        workflow.dag(DAGSettings(targets=targets)).execute_workflow(executor="dryrun")
        return list(workflow._workflow.dag.jobs)


def test_a_figure_is_one_registry_entry_and_one_draw_function(tmp_path, monkeypatch):
    """A figure added through the registry and a draw function alone is configurable (its keys
    checked), planned with its experiment's table, drawn, captioned, and read by the claims it
    names."""
    import altair as alt
    from snakemake.utils import validate

    from distreach import claims
    from distreach.config import check_config
    from distreach.errors import DistreachError
    from distreach.io import write_arrow

    from .conftest import save_tiny
    from .test_workflow import tiny_config

    caption = "Minimum KL of each target against its entropy, one point per target (paper Fig. 99)."
    monkeypatch.setitem(figureregistry.FIGURES, "fig99", figureregistry.Figure(
        caption, keys={"experiment": figureregistry.EXPERIMENT, "model": figureregistry.MODEL}, claims=("C1",)))
    monkeypatch.setattr(figures, "DRAW", dict(figures.DRAW))

    @figures.figure("fig99")
    def fig99(df, spec):
        return alt.Chart(df.filter(pl.col("model") == spec["model"])).mark_point().encode(x="target_entropy:Q", y="kl_min:Q")

    config = tiny_config({arch: str(save_tiny(tmp_path / arch, arch)) for arch in ("llama", "gpt2")})
    spec = {"experiment": "prefix-2", "model": "tiny"}
    config["figures"] = {"fig01": {"experiment": "vanilla"}, "fig99": spec}
    schema = REPO / "schemas/config.schema.yaml"
    for bad, message in (({**spec, "colour": "red"}, "config key figures.fig99.colour: unknown key"),
                         ({"model": "tiny"}, "config key figures.fig99.experiment: missing required key"),
                         ({**spec, "model": "tiny-gpt2"}, "config key figures.fig99: model 'tiny-gpt2' is in none of its")):
        with pytest.raises(DistreachError, match=re.escape(message)):
            check_config({**copy.deepcopy(config), "figures": {"fig99": bad}}, schema, validate)
    # planned: the figure with its experiment's table; the claims report reads that table too
    jobs = planned_jobs(tmp_path, config, {"results/figures/fig99.png", "results/report/claims.md"})
    figure = [j for j in jobs if j.rule.name == "figure"]
    assert [j.wildcards.fig for j in figure] == ["fig99"] and list(figure[0].input.tables) == ["results/collected/prefix-2.arrow"]
    assert figure[0].input.bundle == "results/figures/lib/vega-embed.js"  # the offline page's JavaScript, made once a run
    assert figure[0].params.caption == caption == fig99.__doc__
    report = next(j for j in jobs if j.rule.name == "claims")
    assert "results/collected/prefix-2.arrow" in report.input and report.params.figures["fig99"] == spec
    assert {j.wildcards.experiment for j in jobs if j.rule.name == "collect"} == {"vanilla", "prefix-2"}
    # drawn from the planned input
    rows = [dict(experiment="prefix-2", model=m, method="soft", prefix_len=2, n_soft=2, target_kind="vanilla",
                 target_id=f"t{i}", init_index=0, status="ok", kl_min=0.1 * i, target_entropy=float(i), q_entropy=float(i),
                 entropy_unit="bits") for m in ("tiny", "other") for i in range(4)]
    monkeypatch.chdir(tmp_path)
    write_arrow(pl.DataFrame(rows).to_arrow(), figure[0].input[0])
    figures.draw("fig99", dict(figure[0].input.items()), spec, tmp_path / "fig99")
    assert len(re.findall('role="graphics-symbol" aria-roledescription="point"', (tmp_path / "fig99.svg").read_text())) == 4
    # and its data is C1's, beside Fig. 1's
    c1 = claims.check(pl.DataFrame(rows), {"fig99": spec}).filter(pl.col("claim") == "C1")
    assert c1["figure"].to_list() == ["fig01, fig99"] * 2 and c1["model"].to_list() == ["other", "tiny"]


def test_fig04_draws_a_gcg_panel_beside_the_papers_methods():
    from distreach.figures import DRAW

    rows = [dict(experiment="e", prefix_len=5, model="m", method=m, n_soft=n, target_entropy=h, entropy_unit="bits", kl_min=k + h / 10, init_index=0,
                 target_id=f"t{h}", status="ok", prompt_text="" if m == "soft" else "a b", target_kind="vanilla")
            for m, n, k in (("soft", 5, 0.1), ("hard", 0, 3.0), ("gcg", 0, 1.0)) for h in (0.0, 4.0, 8.0)]
    spec = DRAW["fig04"](pl.DataFrame(rows), {"model": "m", "experiments": ["e"]}).to_dict()
    assert spec["facet"]["sort"] == ["gcg (0 soft)", "hard (0 soft)", "soft (5 soft)"], spec["facet"]
    (data,) = spec["datasets"].values()
    assert {r["prompt"] for r in data} == {"gcg (0 soft)", "hard (0 soft)", "soft (5 soft)"}


def test_figures_are_saved_in_the_formats_their_paths_name():
    """distreach.figures writes what the workflow's figure paths (distreach.figurefiles) name: two
    modules (no job's code reaches figurefiles), one list."""
    from distreach.figurefiles import FIGURE_EXTENSIONS
    from distreach.figures import FORMATS

    assert FORMATS == tuple(f".{ext}" for ext in FIGURE_EXTENSIONS)


def test_a_figure_draws_the_rows_of_its_registry_method_alone(monkeypatch):
    """Fig. 1 draws the rows of its registry entry's ``method`` (soft prompts): rows of another method
    beside them change nothing it draws, and the entry's method is the one drawn."""
    from dataclasses import replace

    rows = pl.DataFrame([dict(experiment="e", prefix_len=5, model="m", method=m, n_soft=n, target_entropy=h,
                              entropy_unit="bits", kl_min=k, init_index=0, target_id=f"t{h}", status="ok",
                              target_kind="vanilla")
                         for m, n, k in (("soft", 5, 0.1), ("hard", 0, 5.0)) for h in (0.0, 4.0)])

    def drawn():
        spec = figures.DRAW["fig01"](rows, {"experiment": "e"}).to_dict()
        return sorted((r["target_entropy"], r["mean"]) for data in spec["datasets"].values() for r in data)

    assert figureregistry.FIGURES["fig01"].method == "soft" and drawn() == [(0.0, 0.1), (4.0, 0.1)]
    monkeypatch.setitem(figureregistry.FIGURES, "fig01", replace(figureregistry.FIGURES["fig01"], method="hard"))
    assert drawn() == [(0.0, 5.0), (4.0, 5.0)]
