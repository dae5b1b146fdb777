"""The workflow end to end on tiny random models: planning, running, rerunning, bad config."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from distreach import figureregistry
from distreach.errors import DistreachError
from distreach.tables import RESULT_COLUMNS, min_over_inits

from .conftest import save_tiny, tiered
from .test_figures import svg_problems

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    return {arch: str(save_tiny(root / arch, arch)) for arch in ("llama", "gpt2")}


def tiny_config(sources) -> dict:
    return {
        "entropy_unit": "bits",
        "models": {
            "tiny": {"source": {"local": sources["llama"]}},
            "tiny-gpt2": {"source": {"local": sources["gpt2"]}},
            "tiny-random": {"source": {"random_init": "tiny", "seed": 1}},
        },
        "targets": {
            "vanilla": {"grid": {"step": 2.0}, "per_level": 2},
            "coarse": {"grid": {"step": 3.0}, "per_level": 1},
            "outlier": {"kind": "outlier", "grid": {"start": 2.0, "step": 2.0, "stop": 4.0}, "ks": [1, 3], "per_level": 1},
            "outlier-vanilla": {"grid": {"start": 2.0, "step": 2.0, "stop": 4.0}, "per_level": 2},
            "lm": {"kind": "lm", "n": 4, "prompt_len": 3},
            "lm-matched": {"kind": "matched", "of": "lm"},
            "lm-shuffled": {"kind": "shuffled", "of": "lm", "copies": 2},
            "migrated": {"kind": "migrated", "of": "lm", "source": "tiny-gpt2"},
            "migrated-matched": {"kind": "matched", "of": "migrated"},
            "pos": {"kind": "pos", "tags": ["NOUN", "ADJ"], "n_tokens": 3, "draws": 2},
        },
        "pos": {"min_pos_prob": 0.5},
        "tuning": {"max_steps": 15, "patience": 5},
        "methods": {"hybrid-1": {"method": "hybrid", "n_soft": 1}},
        "experiments": {
            "vanilla": {"targets": "vanilla", "models": ["tiny", "tiny-gpt2"], "inits": 2, "shards": 2},
            "methods": {"targets": "coarse", "models": ["tiny"], "methods": ["soft", "hybrid-1", "hard"], "inits": 2},
            "random-init": {"targets": "coarse", "models": ["tiny-random"], "inits": 1},
            "prefix-2": {"targets": "coarse", "models": ["tiny"], "inits": 1, "tuning": {"prefix_len": 2}},
            "outliers": {"targets": "outlier", "models": ["tiny"], "inits": 1},
            "outlier-vanilla": {"targets": "outlier-vanilla", "models": ["tiny"], "inits": 1},
            "lm-hard": {"targets": "lm", "models": ["tiny"], "methods": ["hard"], "inits": 1},
            "matched-hard": {"targets": "lm-matched", "models": ["tiny"], "methods": ["hard"], "inits": 1},
            "lm-soft": {"targets": "lm", "models": ["tiny"], "inits": 1},
            "matched-soft": {"targets": "lm-matched", "models": ["tiny"], "inits": 1},
            "shuffled-soft": {"targets": "lm-shuffled", "models": ["tiny"], "inits": 1},
            "migrated-soft": {"targets": "migrated", "models": ["tiny"], "inits": 1},
            "migrated-matched-soft": {"targets": "migrated-matched", "models": ["tiny"], "inits": 1},
            "pos": {"targets": "pos", "models": ["tiny", "tiny-gpt2"], "inits": 1},
        },
        "figures": {
            "fig01": {"experiment": "vanilla"},
            "fig03": {"model": "tiny", "text": "the house"},
            "fig04": {"experiments": ["methods"], "model": "tiny"},
            "fig05": {"experiment": "vanilla", "model": "tiny"},
            "fig06": {"experiments": ["vanilla", "random-init"], "pairs": {"tiny": "tiny-random"}},
            "fig11": {"experiments": ["prefix-2", "methods"], "model": "tiny"},
            "fig07": {"experiments": ["outliers", "outlier-vanilla"], "model": "tiny"},
            "fig08": {"experiments": ["lm-hard", "matched-hard"], "model": "tiny"},
            "fig09": {"experiments": ["lm-soft", "shuffled-soft", "matched-soft"], "model": "tiny"},
            "fig10": {"experiments": ["migrated-soft", "migrated-matched-soft"]},
            "fig12": {"models": ["tiny", "tiny-gpt2"]},
            "fig13": {"experiment": "pos", "pairs": {"tiny": "tiny-gpt2"}},
        },
    }


def snakemake(workdir: Path, config: dict, *args, check=True):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def planned_jobs(proc) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    counts, inside = {}, False
    for line in proc.stdout.splitlines():
        if line.startswith("job ") and "count" in line:
            inside = True
            continue
        if inside:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
    return counts


def figure_marks(stem: Path) -> list[tuple[str, dict]]:
    """The data marks a figure draws (points, line and area segments, bars, ...), as (kind,
    {field: value}) from the labels of its SVG; its three files must be one chart: the SVG's
    titles are in the HTML's spec and the PNG is the SVG's picture at twice its size."""
    svg = stem.with_suffix(".svg").read_text()
    page = stem.with_suffix(".html").read_text()
    png = stem.with_suffix(".png").read_bytes()
    width, height = map(float, re.search(r'<svg [^>]*width="([\d.]+)" height="([\d.]+)"', svg).groups())
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (round(2 * width), round(2 * height))
    titles = [html.unescape(t) for t in re.findall(r'aria-roledescription="title" aria-label="Title text &#x27;(.*?)&#x27;"', svg)
              + re.findall(r"aria-roledescription=\"title\" aria-label=\"Title text '(.*?)'\"", svg)]
    assert titles and all(json.dumps(t)[1:-1] in page for t in titles), (stem.name, titles)
    marks = []
    for label, kind in re.findall(r'aria-label="([^"]*)" role="graphics-symbol" aria-roledescription="([^"]*)"', svg):
        if kind != "title":
            marks.append((kind, dict(part.split(": ", 1) for part in html.unescape(label).split("; ") if ": " in part)))
    return marks


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_single_figure_plans_only_what_it_needs(tmp_path, tiny_sources):
    proc = snakemake(tmp_path, tiny_config(tiny_sources), "-n", "results/figures/fig01.png")
    jobs = planned_jobs(proc)
    # two models of the 'vanilla' experiment, 2 shards each; nothing of 'random-init', no fig05
    assert jobs == {"materialise_model": 2, "targets": 2, "tune_job": 4, "collect": 1, "figure": 1, "vega_bundle": 1}
    proc = snakemake(tmp_path, tiny_config(tiny_sources), "-n", "results/figures/fig06.png")
    # fig06 pairs tiny (from 'vanilla') with its random-init copy (from 'random-init', on targets
    # 'coarse'), whose vanilla targets depend on the vocabulary alone: tiny's, made once
    assert planned_jobs(proc) == {"materialise_model": 3, "targets": 3, "tune_job": 5, "collect": 2, "figure": 1,
                                  "vega_bundle": 1}
    assert "results/targets/coarse/tiny.arrow" in proc.stdout and "targets/coarse/tiny-random" not in proc.stdout
    proc = snakemake(tmp_path, tiny_config(tiny_sources), "-n", "results/figures/fig10.png")
    # migrated targets need tiny-gpt2's LM-generated targets, then the matched vanilla ones
    assert planned_jobs(proc) == {"materialise_model": 2, "targets": 3, "tune_job": 2, "collect": 2, "figure": 1,
                                  "vega_bundle": 1}
    for fig, families in (("fig07", 2), ("fig08", 2), ("fig09", 3)):  # one model, its own targets only
        proc = snakemake(tmp_path, tiny_config(tiny_sources), "-n", f"results/figures/{fig}.png")
        expected = {"materialise_model": 1, "targets": families, "tune_job": families, "collect": families, "figure": 1,
                    "vega_bundle": 1}
        assert planned_jobs(proc) == expected, fig
    proc = snakemake(tmp_path, tiny_config(tiny_sources), "-n", "results/figures/fig12.png")
    # vocabulary and POS jobs only: no targets, no tuning
    assert planned_jobs(proc) == {"materialise_model": 2, "pos_tag": 2, "figure": 1, "vega_bundle": 1}
    proc = snakemake(tmp_path, tiny_config(tiny_sources), "-n", "results/figures/fig03.png")
    # one model's next-token distributions, computed (and a soft prompt tuned) by one job
    assert planned_jobs(proc) == {"materialise_model": 1, "next_token": 1, "figure": 1, "vega_bundle": 1}


@pytest.mark.slow
def test_tiny_dag_runs_and_reruns_nothing(tmp_path, tiny_sources):
    cfg = {**tiny_config(tiny_sources), "share_jobs": True}  # as the default config.yaml
    snakemake(tmp_path, cfg, "--cores", "2")
    # shared jobs: vanilla's shard k shares its job with every soft, hybrid and hard experiment of the
    # model and prefix length, one table per experiment and method
    soft = ("vanilla", "methods", "outliers", "outlier-vanilla", "lm-soft", "matched-soft", "shuffled-soft",
            "migrated-soft", "migrated-matched-soft", "pos")
    assert sorted(p.name for p in (tmp_path / "results/tuning/tiny/tune/shard-0").glob("*.arrow")) == sorted(
        [f"{e}@soft.arrow" for e in soft] + ["methods@hybrid-1.arrow", "methods@hard.arrow", "lm-hard@hard.arrow",
                                              "matched-hard@hard.arrow"])
    drawn = [f"figures/{fig}" for fig in cfg["figures"]] + ["report/achieved"]
    assert len(drawn) == 13
    for stem in drawn:
        for ext in ("html", "png", "svg"):
            assert (tmp_path / f"results/{stem}.{ext}").stat().st_size > 1000
        # readable at a glance: no label cut short, no KL axis below 0
        assert svg_problems((tmp_path / f"results/{stem}.svg").read_text()) == [], stem
    # every page carries the JavaScript bundled once for the run, and no job bundled it anew
    bundle = (tmp_path / "results/figures/lib/vega-embed.js").read_bytes().partition(b"\n")[2]
    assert len(bundle) > 100_000 and all(bundle in (tmp_path / f"results/{stem}.html").read_bytes() for stem in drawn)
    logs = [tmp_path / f"logs/{stem}.log" for stem in drawn]
    assert all(log.is_file() and "bundling anew" not in log.read_text() for log in logs)
    marks = {fig: figure_marks(tmp_path / f"results/figures/{fig}")
             for fig in ("fig01", "fig04", "fig05", "fig06", "fig07", "fig08", "fig09", "fig10", "fig11", "fig12", "fig13")}
    assert all(marks.values()), [fig for fig, m in marks.items() if not m]
    df = pl.read_ipc(tmp_path / "results/collected/vanilla.arrow")
    # Fig. 1 draws one point per model and entropy level: the mean over its targets of the minimum over inits
    means = min_over_inits(df.filter(pl.col("method") == "soft")).group_by("model", "target_entropy").agg(pl.col("kl_min").mean())
    expected = {(m, round(h, 6)): kl for m, h, kl in means.iter_rows()}
    points = {(p["model"], round(float(p["target_entropy"]), 6)): float(p["mean"]) for kind, p in marks["fig01"] if kind == "point"}
    assert len(expected) == 2 * 5 and points.keys() == expected.keys(), (sorted(points), sorted(expected))
    assert all(points[k] == pytest.approx(expected[k], rel=1e-9) for k in expected), (points, expected)
    assert set(RESULT_COLUMNS) <= set(df.columns)
    # what each row produced: the target's and q's top tokens, and the soft prompt (5 x hidden 32)
    assert set(df["q_top_ids"].list.len()) == {20} and (df["p_top_ids"].list.len() >= 1).all()
    assert (df["q_on_p_top"].list.len() == df["p_top_ids"].list.len()).all()
    assert set(df["soft_prompt"].list.len()) == {5 * 32} and df["soft_positions"].to_list() == [[0, 1, 2, 3, 4]] * df.height
    assert df.height == 2 * 10 * 2  # models x targets (5 levels x 2) x inits
    assert df["kl_min"].is_finite().all() and (df["kl_min"] >= 0).all()
    assert set(df["entropy_unit"]) == {"bits"} and set(df["status"]) == {"ok"}
    assert {"model_sha256", "model_source", "dtype", "device", "bos"} <= set(df.columns)
    copies = pl.read_ipc(tmp_path / "results/collected/random-init.arrow")
    assert copies["model"].unique().to_list() == ["tiny-random"]
    methods = pl.read_ipc(tmp_path / "results/collected/methods.arrow")
    assert dict(methods.group_by("method").agg(pl.col("n_soft").first()).iter_rows()) == {"soft": 5, "hybrid-1": 1, "hard": 0}
    hard = methods.filter(pl.col("method") == "hard")
    assert hard["prompt_text"].str.len_chars().min() > 0 and hard["kl_roundtrip"].is_finite().all()
    assert hard["prompt_ids"].list.len().to_list() == [5] * hard.height
    kept = dict(methods.group_by("method").agg(pl.col("soft_prompt").list.len().max()).iter_rows())
    assert kept == {"soft": 5 * 32, "hybrid-1": 32, "hard": 0}
    fig03 = pl.read_ipc(tmp_path / "results/nexttoken/tiny.arrow")
    assert fig03["distribution"].to_list() == ["lm", "vanilla", "tuned"]
    assert fig03["entropy"][0] == pytest.approx(fig03["entropy"][1], abs=0.01)
    # show and generate find the workflow's model folder beside the collected table
    env = {**os.environ, "DISTREACH_CACHE": str(tmp_path / "no-cache")}
    rows = df.filter((pl.col("model") == "tiny") & (pl.col("target_id") == "vanilla-L000-r0") & (pl.col("method") == "soft"))
    best = rows.sort("kl_min", "init_index")["init_index"][0]  # generate's default: the best init
    for args, init in ((["show", "--model", "tiny", "--init", "0", "--target", "vanilla-L000-r0"], 0),
                       (["generate", "--model", "tiny", "--target", "vanilla-L000-r0", "--samples", "1"], best)):
        proc = subprocess.run([sys.executable, "-m", "distreach.cli", args[0], "results/collected/vanilla.arrow", *args[1:]],
                              cwd=tmp_path, capture_output=True, text=True, env=env)
        assert proc.returncode == 0 and f"vanilla-L000-r0 (init {init}; tiny, soft, experiment vanilla)" in proc.stdout, proc.stderr
    assert not (tmp_path / "no-cache").exists()
    outliers = pl.read_ipc(tmp_path / "results/collected/outliers.arrow")
    assert set(outliers["n_outliers"]) == {1, 3} and (outliers["outlier_mass"] > 0).all()
    migrated = pl.read_ipc(tmp_path / "results/collected/migrated-soft.arrow")
    assert set(migrated["source_model"]) == {"tiny-gpt2"} and (migrated["kept_mass"] > 0).all()
    # matched targets and shuffled copies name the LM target they were made from
    lm_ids = set(pl.read_ipc(tmp_path / "results/collected/lm-soft.arrow")["target_id"])
    for exp in ("matched-soft", "shuffled-soft"):
        assert set(pl.read_ipc(tmp_path / f"results/collected/{exp}.arrow")["source_target_id"]) == lm_ids, exp
    for model in cfg["models"]:
        vocab = pl.read_ipc(tmp_path / f"results/vocab/{model}.arrow")
        assert vocab.height == 93 and vocab["is_english"].sum() >= 60
        # a random-init copy has its base's tokenizer: no POS table of its own
        assert (tmp_path / f"results/pos/{model}.arrow").exists() == (model != "tiny-random")
    pos = pl.read_ipc(tmp_path / "results/collected/pos.arrow")
    assert set(pos["pos"]) == {"NOUN", "ADJ"} and pos.height == 2 * 2 * 2  # models x tags x draws
    assert set(pos["target_kind"]) == {"pos"}
    # nothing changed: nothing to do
    proc = snakemake(tmp_path, cfg, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # a second run from scratch, each experiment in jobs of its own, gives bit-identical tables
    again = tmp_path / "again"
    wanted = ["results/collected/vanilla.arrow", "results/collected/pos.arrow"]
    proc = snakemake(again, {**cfg, "share_jobs": False}, "-n", *wanted)
    assert planned_jobs(proc)["tune_job"] == 2 * 2 + 2  # vanilla: 2 models x 2 shards; pos: 2 models
    snakemake(again, {**cfg, "share_jobs": False}, "--cores", "2", *wanted)
    assert pl.read_ipc(again / "results/collected/vanilla.arrow").equals(df)
    assert pl.read_ipc(again / "results/collected/pos.arrow").equals(pos)
    # the pages are made from the bundle file: changed (by the same versions), every page job reruns and carries it
    lib = tmp_path / "results/figures/lib/vega-embed.js"
    header, _, body = lib.read_text(encoding="utf-8").partition("\n")
    lib.write_text(f"{header}\n/* a changed bundle */\n{body}", encoding="utf-8")
    assert planned_jobs(snakemake(tmp_path, cfg, "-n")) == {"figure": 12, "achieved": 1, "all": 1}
    snakemake(tmp_path, cfg, "--cores", "2")
    assert all("/* a changed bundle */" in (tmp_path / f"results/{stem}.html").read_text(encoding="utf-8") for stem in drawn)


BAD_CONFIGS = [
    (lambda c: c["models"]["tiny"].update(source={"ftp": "x"}), "models.tiny.source: must have exactly one of"),
    (lambda c: c["targets"]["vanilla"]["grid"].update(start=-1.0), "targets.vanilla.grid.start: -1.0 is less than the minimum of 0"),
    (lambda c: c["experiments"]["vanilla"].pop("targets"), "experiments.vanilla.targets: missing required key"),
    (lambda c: c.update(colour="blue"), "config key colour: unknown key"),
    (lambda c: c["tuning"].update(learning_rate=0.1), "config key tuning.learning_rate: unknown key"),
    (lambda c: c["experiments"]["vanilla"]["models"].append("nosuch"), "experiments.vanilla.models[2]: unknown model 'nosuch'"),
    (lambda c: c["models"]["tiny-random"]["source"].update(random_init="nosuch"), "models.tiny-random.source.random_init: unknown model"),
    (lambda c: c.update(entropy_unit="dits"), "config key entropy_unit: 'dits' is not one of"),
    (lambda c: c["targets"]["lm-matched"].update(of="nosuch"), "config key targets.lm-matched.of: a matched family needs an existing family"),
    (lambda c: c["targets"]["migrated"].update(source="nosuch"), "config key targets.migrated.source: unknown model 'nosuch'"),
    (lambda c: c["targets"]["pos"].update(tags=["NOUN", "XYZ"]), "config key targets.pos.tags[1]: 'XYZ' is not one of ['ADJ', 'ADP', "),
    (lambda c: c["pos"].update(min_pos_prob=2), "config key pos.min_pos_prob: 2 is greater than the maximum of 1"),
    (lambda c: c["targets"]["outlier"].update(ks=[1, 1]), "config key targets.outlier.ks: [1, 1] has non-unique elements"),
    (lambda c: c["figures"].update(fig02={"experiment": "vanilla"}),
     "config key figures.fig02: unknown key (allowed here: fig01, fig03, fig04, fig05, fig06, fig07, fig08, fig09, "
     "fig10, fig11, fig12, fig13); Fig. 2 illustrates the three tuning frameworks: a drawing, not data"),
    (lambda c: c["figures"]["fig12"].update(models=["nosuch"]), "config key figures.fig12.models[0]: unknown model 'nosuch'"),
    (lambda c: c["figures"].update(fig13={"experiment": "vanilla"}), "config key figures.fig13.experiment: 'vanilla' tunes on vanilla targets"),
    (lambda c: c["figures"]["fig03"].update(model="nosuch"), "config key figures.fig03.model: unknown model 'nosuch'"),
    (lambda c: c["tuning"].update(top_k=-1), "config key tuning.top_k: -1 is less than the minimum of 0"),
    (lambda c: c["tuning"].update(min_delta=1), "config key tuning.min_delta: 1 is greater than or equal to the maximum of 1"),
    # settings the schema takes but the engine refuses: refused before any job, naming where they are set
    (lambda c: c["experiments"]["vanilla"].update(tuning={"n_soft": 9}),
     "config key experiments.vanilla.tuning.n_soft: a soft prompt has 5 soft positions; for experiment vanilla's soft rows"),
    (lambda c: c["tuning"].update(gcg_width=8),  # for the first experiment's rows (its order: the config file's)
     "config key tuning.gcg_width: a setting of method gcg only (method is "),
    (lambda c: c["targets"]["vanilla"]["grid"].update(start=10, stop=2),
     "config key targets.vanilla.grid: start 10 is above stop 2: no levels"),
    (lambda c: c["methods"]["hybrid-1"].update(n_soft=9),
     "config key methods.hybrid-1.n_soft: must be in 0..5 (got 9); for experiment methods's hybrid-1 rows"),
    # what the schema takes but no job would read as written: refused, not ignored
    (lambda c: c["tuning"].update(method="hard"),
     "config key tuning.method: every method it applies to sets its own; an experiment's methods are its 'methods' list"),
    (lambda c: c["experiments"]["vanilla"].update(tuning={"method": "hard"}), "config key experiments.vanilla.tuning.method: "),
    (lambda c: c["targets"]["vanilla"].update(ks=[1]),
     "config key targets.vanilla.ks: a vanilla family has no ks (a key of outlier families: is its kind set?)"),
    (lambda c: c["targets"]["lm"].update(tolerance=0.1),
     "config key targets.lm.tolerance: an lm family has no tolerance (a key of vanilla, outlier and matched families)"),
    (lambda c: c["targets"]["migrated"].pop("source"), "config key targets.migrated.source: missing required key"),
    # a figure whose experiments hold none of what it draws, or a pair that is not what it says
    (lambda c: c["figures"]["fig07"].update(experiments=["vanilla"]),
     "config key figures.fig07.experiments: none of ['vanilla'] (of model tiny) tunes on outlier targets with method 'soft' "
     "in its methods, which fig07 draws"),
    (lambda c: c["figures"]["fig10"].update(experiments=["lm-soft"]),
     "config key figures.fig10.experiments: none of ['lm-soft'] tunes on migrated targets with method 'soft' in its methods"),
    (lambda c: c["figures"]["fig08"].update(experiments=["lm-soft", "matched-hard"]),  # hard prompts, not on lm targets
     "config key figures.fig08.experiments: none of ['lm-soft', 'matched-hard'] (of model tiny) tunes on lm targets with "
     "method 'hard' in its methods, which fig08 draws"),
    (lambda c: c["figures"]["fig05"].update(experiment="lm-hard"),
     "config key figures.fig05.experiment: none of ['lm-hard'] (of model tiny) tunes with method 'soft' in its methods"),
    (lambda c: c["figures"]["fig06"].update(pairs={"tiny": "tiny-gpt2"}),
     "config key figures.fig06.pairs.tiny: 'tiny-gpt2' is not a random_init copy of 'tiny' (models.tiny-gpt2.source: "),
    (lambda c: c["figures"]["fig06"].update(pairs={"tiny": "nosuch"}), "config key figures.fig06.pairs.tiny: unknown model 'nosuch'"),
    # a model's files that are not there
    (lambda c: c["models"]["tiny"].update(source={"local": "/nonexistent/model"}),
     "config key models.tiny.source.local: no folder /nonexistent/model"),
    (lambda c: c["models"]["tiny"].update(source={"local": "no/such/model"}),
     "config key models.tiny.source.local: no folder no/such/model (from "),
    (lambda c: c["models"]["tiny"].update(source={"local": "/"}), "config key models.tiny.source.local: / has no config.json"),
    (lambda c: c["models"]["tiny"].update(source={"gguf_file": "/nonexistent/m.gguf"}),
     "config key models.tiny.source.gguf_file: no file /nonexistent/m.gguf"),
]


def test_a_tuning_method_a_named_method_reads_is_accepted(tiny_sources):
    """A named method whose entry sets no method takes the tuning's (the config's or its experiment's):
    there ``method`` is read, and accepted."""
    from snakemake.utils import validate

    from distreach.config import check_config
    from distreach.jobs import tuning_jobs

    cfg = tiny_config(tiny_sources)
    cfg["methods"]["long"] = {"max_steps": 20}
    cfg["experiments"]["methods"]["methods"].append("long")
    cfg["experiments"]["methods"]["tuning"] = {"method": "hard"}
    check_config(cfg, REPO / "schemas" / "config.schema.yaml", validate)
    shards = [s for job in tuning_jobs(cfg).values() for s in job["shards"] if s["experiment"] == "methods"]
    assert {s["method"]: s["tuning"]["method"] for s in shards} == {"soft": "soft", "hybrid-1": "hybrid", "hard": "hard",
                                                                   "long": "hard"}


@pytest.mark.parametrize("mutate,message", BAD_CONFIGS)
def test_bad_config_is_refused_with_one_line_naming_the_key(tiny_sources, mutate, message):
    """Every bad config of the list through the workflow's own check, in this process (the
    Snakemake runs below keep one cross-reference error in the fast tier)."""
    from snakemake.utils import validate

    from distreach.config import check_config

    cfg = tiny_config(tiny_sources)
    mutate(cfg)
    with pytest.raises(DistreachError) as err:
        check_config(cfg, REPO / "schemas" / "config.schema.yaml", validate)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("mutate,message", tiered(BAD_CONFIGS, set(range(len(BAD_CONFIGS))) - {5}))
def test_bad_config_fails_before_any_job_with_one_line(tmp_path, tiny_sources, mutate, message):
    cfg = tiny_config(tiny_sources)
    mutate(cfg)
    proc = snakemake(tmp_path, cfg, "-n", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    # exactly one line on stderr (the config check's, as the distreach CLI writes it), no traceback
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("distreach: error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_a_figure_of_the_paper_that_is_not_data_is_refused_saying_why(tmp_path, tiny_sources):
    """The paper's Fig. 2 (a drawing) asked for as a target: planning stops, naming the file, why
    and the figures there are, and nothing runs."""
    proc = snakemake(tmp_path, tiny_config(tiny_sources), "-n", "results/figures/fig02.svg", check=False)
    assert proc.returncode != 0
    drawn = ", ".join(sorted(figureregistry.FIGURES))
    assert (f"results/figures/fig02.svg: {figureregistry.NOT_DRAWN['fig02']}; the figures drawn are {drawn}"
            in proc.stdout + proc.stderr)
    assert not (tmp_path / "results").exists()


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_a_bad_key_from_the_command_line_is_named_there(tmp_path, tiny_sources):
    proc = snakemake(tmp_path, tiny_config(tiny_sources), "-n", "--config", "seed=-3", check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1] == (
        f"distreach: error: {tmp_path / 'config.yaml'} with --config seed: config key seed: -3 is less than the minimum of 0")


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_what_needs_the_model_to_be_refused_stops_its_job_with_one_line(tmp_path, tiny_sources):
    """A grid that starts above log|V| (the config check cannot know |V|): the targets job stops,
    its error naming the family and the model, and writes no target file."""
    cfg = tiny_config(tiny_sources)
    cfg["targets"]["vanilla"]["grid"]["start"] = 50
    proc = snakemake(tmp_path, cfg, "--cores", "1", "results/targets/vanilla/tiny.arrow", check=False)
    assert proc.returncode != 0
    assert ("error: targets.vanilla on model tiny: entropy grid: start 50 bits is above log|V| = 6.539 bits of 93 tokens: "
            "no levels") in proc.stderr
    assert not (tmp_path / "results/targets/vanilla/tiny.arrow").exists()


@pytest.mark.slow  # over 10 s on a 2-core CPU
@pytest.mark.parametrize("replace", [[], ["--replace-workflow-config"]])
def test_a_configfile_replaces_config_yaml_with_or_without_the_flag(tmp_path, tiny_sources, replace):
    """config.yaml is read only where no --configfile is given: a cluster's jobs, which Snakemake
    starts with the --configfile files and without --replace-workflow-config, read the config the
    run was planned with; an error names the file read."""
    cfg = tiny_config(tiny_sources)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**cfg, "colour": "blue"}))  # not read: it would be refused
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({**cfg, "seed": -3}))
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", "mine.yaml", *replace, "-n"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1] == (
        f"distreach: error: {tmp_path / 'mine.yaml'}: config key seed: -3 is less than the minimum of 0")


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_gpu_benchmark_script_runs_at_tiny_size_on_the_cpu(tmp_path):
    import json

    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_fig1.py"), "--tiny", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_fig1.json").read_text())
    assert report["rows"] == report["levels"] * 5 and report["row_steps"] > 0
    # TFLOP/s recomputed from the rows' steps and the FLOP formula of the tiny Llama shape (hidden 64,
    # 4 heads and 2 KV heads of 16, MLP 128, 2 layers, |V| 2000): linear layers over the 5 prefix
    # positions plus the output layer at the last one, forward and backward to the inputs
    steps = pl.read_ipc(tmp_path / "gpu_fig1.arrow")["steps"]
    assert len(steps) == report["rows"] and steps.sum() == report["row_steps"]
    body = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128)
    flops = 2 * (2 * body * 5 + 2 * 2000 * 64)
    assert report["achieved_tflops"] == pytest.approx(steps.sum() * flops / report["tuning_seconds"] / 1e12, rel=1e-9)
    assert 0 < report["tuning_seconds"] and 0 <= report["setup_seconds"]
    assert (tmp_path / "gpu_fig1.png").stat().st_size > 1000


def test_default_config_is_valid_and_plans_every_figure(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    jobs = planned_jobs(snakemake(tmp_path, config, "-n"))
    assert jobs["figure"] == len(config["figures"]) == 12
    assert jobs["materialise_model"] == len(config["models"]) == 3 and jobs["collect"] == len(config["experiments"])
    assert jobs["next_token"] == 1 and jobs["achieved"] == 1 and jobs["vega_bundle"] == 1


# a requested path whose name the config lacks, and what its error names: the section, and
# the names it has (any order); the collected table of an unknown experiment was planned from no
# shards, the others failed on a KeyError
UNKNOWN_NAMES = [
    ("results/models/nosuch", "'nosuch' is not in the config's models section"),
    ("results/vocab/nosuch.arrow", "'nosuch' is not in the config's models section"),
    ("results/targets/vanilla/nosuch.arrow", "'nosuch' is not in the config's models section"),
    ("results/targets/nosuch/tiny.arrow", "'nosuch' is not in the config's targets section"),
    ("results/targets/lm-matched/nosuch.arrow", "'nosuch' is not in the config's models section"),
    ("results/collected/nosuch.arrow", "'nosuch' is not in the config's experiments section"),
    ("results/figures/fig12.png", "'fig12' is not in the config's figures section"),
    ("results/tuning/tiny/nosuch/shard-0", "no experiment of the config is tuned in results/tuning/tiny/nosuch/shard-0"),
    ("results/nexttoken/tiny-gpt2.arrow", "no figure of next-token distributions is drawn on model tiny-gpt2"),
]


@pytest.mark.parametrize("path,message", UNKNOWN_NAMES)
def test_a_path_naming_what_the_config_lacks_is_refused_naming_it(tmp_path, tiny_sources, path, message):
    from snakemake.exceptions import InputFunctionException

    from .test_figures import planned_jobs as planned_in_process

    config = tiny_config(tiny_sources)
    del config["figures"]["fig12"]
    with pytest.raises(InputFunctionException) as raised:
        planned_in_process(tmp_path, config, {path})
    error = str(raised.value)
    assert message in error
    if "section" in message:
        section = message.split("config's ")[1].split()[0]
        listed = re.search(re.escape(message) + r" \(configured: ([^)]*)\)", error).group(1)
        assert sorted(listed.split(", ")) == sorted(config[section])


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for part in ("Snakefile", "rules", "scripts", "schemas", "envs", "report", "distreach"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / part)
    return dest


@pytest.mark.slow
def test_partial_reruns(tmp_path, tiny_sources):
    """Editing a library module reruns the rules whose scripts reach it, through any chain of
    imports (a chart edit: the figures, not the claims report); changing one figure's config entry
    reruns that figure, and the claims report if claims are tested on it; changing one
    experiment's tuning settings reruns that experiment's shards and what depends on them, nothing
    else."""
    wf = copy_workflow(tmp_path / "wf")
    model = shutil.copytree(tiny_sources["llama"], tmp_path / "model")  # its files are rewritten below
    cfg = {
        "models": {"tiny": {"source": {"local": str(model)}}},
        "targets": {"coarse": {"grid": {"step": 3.0}, "per_level": 1}},
        "tuning": {"max_steps": 5, "patience": 5},
        "experiments": {
            "a": {"targets": "coarse", "models": ["tiny"], "inits": 1, "shards": 2},
            "b": {"targets": "coarse", "models": ["tiny"], "inits": 1, "shards": 2},
        },
        "figures": {"fig01": {"experiment": "a"}, "fig05": {"experiment": "b", "model": "tiny"},
                    "fig03": {"model": "tiny", "tune": False}},
    }
    run = [sys.executable, "-m", "snakemake", "-s", str(wf / "Snakefile"), "--configfile", "config.yaml"]
    env = {**os.environ, "PYTHONPATH": str(wf)}  # the copy's distreach, here and in every job

    def smk(*args):
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.run([*run, *args], cwd=tmp_path, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc

    assert "pos_tag" not in planned_jobs(smk("-n"))  # no figure or target family here reads a POS table
    smk("--cores", "2")
    assert "Nothing to be done" in smk("-n").stdout
    # the figures and the achieved figure reach distreach.figures (the charts) through their scripts'
    # imports; the claims report does not
    module = wf / "distreach" / "figures.py"
    source = module.read_text()
    module.write_text(source.replace("def save(chart, stem: str | Path,", "def save(chart, stem: str | Path, changed=None,"))
    assert planned_jobs(smk("-n")) == {"figure": 3, "achieved": 1, "all": 1}
    module.write_text(source)
    # a module the tuning jobs reach through distreach.tuning
    module = wf / "distreach" / "infotheory.py"
    module.write_text(module.read_text() + "\n# a changed line\n")
    assert planned_jobs(smk("-n"))["tune_job"] == 4
    module.write_text(module.read_text().removesuffix("\n# a changed line\n"))
    assert "Nothing to be done" in smk("-n").stdout
    cfg["figures"]["fig05"]["experiment"] = "a"  # no claim is tested on Fig. 5
    assert planned_jobs(smk("-n")) == {"figure": 1, "all": 1}
    cfg["figures"]["fig05"]["experiment"] = "b"
    cfg["figures"]["fig01"]["experiment"] = "b"  # C1 and C2 are, and the achieved figure shows its rows
    assert planned_jobs(smk("-n")) == {"figure": 1, "claims": 1, "achieved": 1, "all": 1}
    cfg["figures"]["fig01"]["experiment"] = "a"
    cfg["experiments"]["b"]["tuning"] = {"lr": 0.05}
    assert planned_jobs(smk("-n")) == {"tune_job": 2, "collect": 1, "figure": 1, "all": 1}
    del cfg["experiments"]["b"]["tuning"]
    # every experiment's tuning settings: Fig. 3's next-token job tunes nothing here, and does not rerun
    cfg["tuning"]["top_k"] = 5
    assert planned_jobs(smk("-n")) == {"tune_job": 4, "collect": 2, "figure": 2, "claims": 1, "achieved": 1, "all": 1}
    del cfg["tuning"]["top_k"]
    assert "Nothing to be done" in smk("-n").stdout
    # a file beside the model's that loading it does not read: nothing reruns
    (model / "README.md").write_text("notes")
    (model / ".notes").write_text("notes")
    assert "Nothing to be done" in smk("-n").stdout
    # the model's own files rewritten (other weights): the model is written again, and all that reads it reruns
    save_tiny(model, "llama", seed=7)
    assert planned_jobs(smk("-n")) == {"materialise_model": 1, "targets": 1, "next_token": 1, "tune_job": 4, "collect": 2,
                                       "figure": 3, "claims": 1, "achieved": 1, "all": 1}


@pytest.mark.slow  # over 20 s on a 2-core CPU
def test_lint_and_format_are_clean():
    for extra in ([], ["--configfile", "configs/paper.yaml", "--replace-workflow-config"]):
        proc = subprocess.run([*SNAKEMAKE, "--lint", *extra], cwd=REPO, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Congratulations, your workflow is in a good condition!" in out, out[-3000:]
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_slurm_profile_plans_the_paper_study_without_the_hub(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "slurm", "-n", "--directory", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = planned_jobs(proc)
    # POS tables of the 6 models Figs. 12 and 13 read (not of the other 5)
    assert jobs["materialise_model"] == 11 and jobs["tune_job"] == 158 and jobs["pos_tag"] == 6
    assert jobs["figure"] == 12 and jobs["next_token"] == 1 and jobs["achieved"] == 1
    assert not any(tmp_path.joinpath("results").rglob("*"))
    total = sum(jobs.values())  # docs/cluster.md states the plan's size
    assert f"plans {total - jobs['all']} jobs (`snakemake --profile slurm -n`; {total}\nwith the `all` target), " \
           f"{jobs['tune_job']} of them" in (REPO / "docs" / "cluster.md").read_text()
    # and the GPU-hours its tuning jobs request (their runtime limits, minutes)
    minutes = [int(re.search(r"runtime=(\d+)", job).group(1)) for job in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout)
               if job.startswith("rule tune_job:")]
    assert len(minutes) == jobs["tune_job"]
    assert f"the profile requests {sum(minutes) / 60:.0f} GPU-hours of wall time on first attempts" in " ".join((REPO / "docs" / "cluster.md").read_text().split())
