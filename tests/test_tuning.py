import os
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from distreach.settings import PATIENCE
from distreach.errors import DistreachError
from distreach.io import arrow_metadata, git_commit, package_versions, read_arrow, source_commit, write_arrow
from distreach.models import load_materialised
from distreach.settings import tuning_config
from distreach.tuning import run_shard, shard_rows
from distreach.tables import RESULT_COLUMNS, collect, min_over_inits
from distreach.vanilla import EntropyGrid, VanillaSettings, vanilla_targets


def test_shards_partition_the_rows_and_mix_entropies():
    rows = [shard_rows(7, 3, k, 4) for k in range(4)]
    flat = sorted(r for part in rows for r in part)
    assert flat == [(t, i) for t in range(7) for i in range(3)]
    assert max(map(len, rows)) - min(map(len, rows)) <= 1
    for part in rows:  # every shard sees low and high targets
        assert min(t for t, _ in part) <= 1 and max(t for t, _ in part) >= 5
    with pytest.raises(DistreachError, match="shard 4 is outside 0..3"):
        shard_rows(7, 3, 4, 4)


def test_tuning_config_merges_and_rejects_unknown_keys():
    cfg = tuning_config({"lr": 0.2, "max_steps": 10}, {"max_steps": 5})
    assert cfg.lr == 0.2 and cfg.max_steps == 5 and cfg.patience == PATIENCE
    with pytest.raises(DistreachError, match="unknown key"):
        tuning_config({"learning_rate": 0.1})


def test_min_over_inits_takes_each_targets_lowest_ok_init():
    """A failed init's KL is no result, however low: a target whose inits all failed has no row."""
    keys = {"experiment": "e", "model": "m", "method": "soft", "prefix_len": 5, "n_soft": 5, "target_kind": "vanilla"}
    rows = [("a", 0, "ok", 2.0), ("a", 1, "non-finite KL at step 3", 1.0), ("a", 2, "ok", 1.5),
            ("b", 0, "non-finite KL at step 0", 0.5), ("c", 0, "ok", 3.0), ("c", 1, "ok", 0.25)]
    df = pl.DataFrame([{**keys, "target_id": t, "init_index": i, "status": s, "kl_min": k} for t, i, s, k in rows])
    best = min_over_inits(df)
    assert best.select("target_id", "init_index", "kl_min").rows() == [("a", 2, 1.5), ("c", 1, 0.25)]


def test_run_shards_and_collect(tiny_dirs, tmp_path):
    targets = vanilla_targets(93, EntropyGrid(step=2.0, unit="bits"), VanillaSettings(per_level=1))
    write_arrow(targets, tmp_path / "t.arrow", {"model": "made-for", "family": "vanilla", "settings": {}})
    cfg = tuning_config({"max_steps": 10, "patience": 3})
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"shard-{k}.arrow")
        run_shard(model_dir=str(tiny_dirs["llama"]), targets_path=str(tmp_path / "t.arrow"), out_path=str(paths[-1]),
                  experiment="e", method="soft", tuning=cfg, inits=2, shard=k, n_shards=2, device="cpu")
    df = collect([str(p) for p in paths], str(tmp_path / "all.arrow"))
    assert set(RESULT_COLUMNS) <= set(df.columns)
    assert df.height == targets.num_rows * 2
    assert df.select("target_id", "init_index").unique().height == df.height
    meta = read_arrow(tmp_path / "all.arrow").schema.metadata
    assert b"distreach" in meta and b"torch" in meta[b"distreach"]
    # each shard's provenance: dtype, device and the attention implementation the model ran
    shard = arrow_metadata(read_arrow(paths[0]))
    assert (shard["dtype"], shard["device"], shard["attention"]) == ("fp32", "cpu", {"fp32": "sdpa"})
    assert shard["targets"] == {"model": "made-for", "family": "vanilla"}  # what the target file was made for
    run_shard(model_dir=str(tiny_dirs["llama"]), targets_path=str(tmp_path / "t.arrow"), out_path=str(tmp_path / "b.arrow"),
              experiment="e", method="soft", tuning=tuning_config({"max_steps": 2}), inits=1, shard=0, n_shards=1,
              dtype="bf16", device="cpu")
    shard = arrow_metadata(read_arrow(tmp_path / "b.arrow"))
    assert (shard["dtype"], shard["attention"]) == ("bf16", {"bf16": "eager"})
    best = min_over_inits(df)
    assert best.height == targets.num_rows
    expected = df.group_by("target_id").agg(pl.col("kl_min").min()).sort("target_id")
    assert best.sort("target_id")["kl_min"].to_list() == expected["kl_min"].to_list()


CODE_FILES = ["distreach/a.py", "scripts/s.py", "rules/r.smk", "Snakefile", "schemas/c.yaml", "benchmarks/b.py",
              "benchmarks/g.sh", "config.yaml", "configs/p.yaml", "envs/e.yaml", "pyproject.toml", "requirements-x.txt"]


@pytest.mark.parametrize("code", CODE_FILES)
def test_provenance_names_the_commit_of_the_checkout_and_whether_its_code_has_changes(tmp_path, monkeypatch, code):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}

    def git(root, *args):
        return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "-c",
                               "commit.gpgsign=false", *args], capture_output=True, text=True, check=True, env=env).stdout.strip()

    def write(name, text=""):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    assert git_commit(tmp_path) is None  # not a git work tree
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "status.showUntrackedFiles", "no")  # a user's setting does not hide new code
    for name in CODE_FILES:
        write(name, "1\n")
    write("results.json", "{}\n")
    write(".gitignore", "__pycache__/\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "a")
    head = git(tmp_path, "rev-parse", "HEAD")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "nowhere"))  # a hook's environment does not redirect the check
    assert git_commit(tmp_path) == head
    write("results.json", '{"rerun": 1}\n')  # a result file kept in the repository is not code
    write("notes.txt")
    write("distreach/__pycache__/a.cpython-311.pyc")  # nor is an ignored file
    assert git_commit(tmp_path) == head
    write(code, "2\n")  # a changed code file is
    assert git_commit(tmp_path) == head + "+dirty"
    git(tmp_path, "checkout", "-q", "--", code)
    assert git_commit(tmp_path) == head
    write(str(Path(code).with_name("new-" + Path(code).name)))  # and so is a new one
    assert git_commit(tmp_path) == head + ("+dirty" if "/" in code else "")  # (a new file beside a top-level one is not code)
    (tmp_path / "site-packages").mkdir()  # an installed copy in a folder inside some work tree
    assert git_commit(tmp_path / "site-packages") is None
    # the package's own checkout, in every result file's package versions
    monkeypatch.delenv("GIT_DIR")
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        source_commit.cache_clear()
        assert package_versions()["distreach_commit"].removesuffix("+dirty") == git(repo, "rev-parse", "HEAD")


def test_a_shard_with_no_rows_writes_an_empty_table(tiny_dirs, tmp_path):
    targets = vanilla_targets(93, EntropyGrid(step=8.0, unit="bits"), VanillaSettings(per_level=1))
    write_arrow(targets, tmp_path / "t.arrow")
    n_rows = targets.num_rows
    table = run_shard(model_dir=str(tiny_dirs["llama"]), targets_path=str(tmp_path / "t.arrow"), out_path=str(tmp_path / "s.arrow"),
                      experiment="e", method="soft", tuning=tuning_config({"max_steps": 3}), inits=1, shard=n_rows, n_shards=n_rows + 1, device="cpu")
    assert table.num_rows == 0 and set(RESULT_COLUMNS) <= set(table.column_names)
    assert read_arrow(tmp_path / "s.arrow").num_rows == 0
    assert arrow_metadata(read_arrow(tmp_path / "s.arrow"))["attention"] == {"fp32": "sdpa"}  # the dtype it would have run in


def test_methods_and_prefix_lengths_on_a_target_share_their_init_tokens(tiny_dirs, tmp_path):
    """Paired designs: soft, hybrid and hard rows (and shorter prefixes, in other experiments) on
    the same target and init start from the same recorded tokens."""
    targets = vanilla_targets(93, EntropyGrid(step=8.0, unit="bits"), VanillaSettings(per_level=2))
    write_arrow(targets, tmp_path / "t.arrow")
    runs = {
        "soft": ("e1", {}), "hybrid": ("e2", {"method": "hybrid", "n_soft": 2}), "hard": ("e3", {"method": "hard"}),
        "short": ("e4", {"prefix_len": 3}),
    }
    got = {}
    loaded, _ = load_materialised(str(tiny_dirs["llama"]), dtype="fp32", device="cpu")
    for name, (experiment, over) in runs.items():
        table = run_shard(model_dir=None, loaded=loaded, targets_path=str(tmp_path / "t.arrow"), out_path=str(tmp_path / f"{name}.arrow"),
                          experiment=experiment, method=name, tuning=tuning_config({"max_steps": 2}, over), inits=2, shard=0, n_shards=1,
                          device="cpu")
        got[name] = pl.from_arrow(table).sort("target_id", "init_index")
    soft = got["soft"]
    assert soft.select("target_id", "init_ids").unique("init_ids").height == soft.height  # rows differ from each other
    for name in ("hybrid", "hard"):
        assert got[name]["init_ids"].to_list() == soft["init_ids"].to_list()
        assert got[name]["init_seed"].to_list() == soft["init_seed"].to_list()
    assert [ids[:3] for ids in soft["init_ids"].to_list()] == got["short"]["init_ids"].to_list()


def test_tune_rows_is_a_shard_without_files(tiny_dirs, tmp_path, monkeypatch):
    from distreach.models import load_materialised
    from distreach.tuning import tune_rows
    from distreach.targets import target_probs

    targets = vanilla_targets(93, EntropyGrid(step=3.0, unit="bits"), VanillaSettings(per_level=1))
    write_arrow(targets, tmp_path / "t.arrow")
    cfg = tuning_config({"method": "hybrid", "max_steps": 6, "patience": 3})
    args = dict(experiment="e", method="hybrid", tuning=cfg, inits=2, shard=1, n_shards=2)
    written = run_shard(model_dir=str(tiny_dirs["llama"]), targets_path=str(tmp_path / "t.arrow"),
                        out_path=str(tmp_path / "s.arrow"), device="cpu", **args)
    loaded, _ = load_materialised(tiny_dirs["llama"], dtype="fp32", device="cpu")
    monkeypatch.chdir(tmp_path)
    before = sorted((str(p), p.stat().st_size) for p in tmp_path.rglob("*"))
    table = tune_rows(loaded, *target_probs(targets, 93), **args)
    assert sorted((str(p), p.stat().st_size) for p in tmp_path.rglob("*")) == before  # nothing written
    assert pl.from_arrow(table).equals(pl.from_arrow(read_arrow(tmp_path / "s.arrow")))
    assert pl.from_arrow(table).equals(pl.from_arrow(written))
    assert table.schema.metadata[b"distreach"] == read_arrow(tmp_path / "s.arrow").schema.metadata[b"distreach"]


def test_a_tuning_context_goes_where_its_model_does(tiny_llama, tmp_path):
    """run_shard, run_job and api.tune_target take a model's tuning context in place of the model
    (same table); a context made under other settings is refused in one line."""
    from distreach import api
    from distreach.engine import tuning_context

    targets = vanilla_targets(93, EntropyGrid(step=8.0, unit="bits"), VanillaSettings(per_level=1))
    write_arrow(targets, tmp_path / "t.arrow")
    settings = {"method": "hard", "prefix_len": 2, "max_steps": 3}
    cfg = tuning_config(settings)
    ctx = tuning_context(tiny_llama, cfg)
    args = dict(model_dir=None, targets_path=str(tmp_path / "t.arrow"), experiment="e", method="hard", tuning=cfg,
                inits=1, shard=0, n_shards=1)
    plain = run_shard(loaded=tiny_llama, out_path=str(tmp_path / "a.arrow"), **args)
    assert pl.from_arrow(run_shard(loaded=ctx, out_path=str(tmp_path / "b.arrow"), **args)).equals(pl.from_arrow(plain))
    df = api.tune_target(ctx, targets, inits=1, **settings)
    assert df.equals(api.tune_target(tiny_llama, targets, inits=1, **settings))
    with pytest.raises(DistreachError, match="^a tuning context made for .* used with tuning settings"):
        api.tune_target(ctx, targets, inits=1, **settings, bos="none")


def test_a_job_of_soft_hybrid_and_hard_shards_writes_each_as_its_own_run_would(tiny_dirs, tmp_path):
    """run_job tunes shards that differ only in their soft positions in the same batches: each
    experiment's table has its method, prompt shapes, settings and hard-prompt text as run_shard
    gives it alone, its numbers equal up to float rounding, and names the experiments it was tuned
    with."""
    from distreach.tuning import run_job

    targets = vanilla_targets(93, EntropyGrid(step=3.0, unit="bits"), VanillaSettings(per_level=1))
    write_arrow(targets, tmp_path / "t.arrow")
    base = {"max_steps": 8, "patience": 4, "prefix_len": 3}
    shards = [dict(experiment=e, method=name, tuning=tuning_config({**base, **extra}), inits=1, shard=0, n_shards=1,
                   targets=str(tmp_path / "t.arrow"), out=str(tmp_path / f"{e}@{name}.arrow"))
              for e, name, extra in (("a", "soft", {}), ("b", "hybrid-1", {"method": "hybrid", "n_soft": 1}),
                                     ("b", "hard", {"method": "hard"}))]
    tables = run_job(model_dir=str(tiny_dirs["llama"]), shards=shards, checkpoint=tmp_path / "job.ckpt", device="cpu")
    for m, table in zip(shards, tables):
        alone = pl.from_arrow(run_shard(model_dir=str(tiny_dirs["llama"]), targets_path=m["targets"],
                                        out_path=str(tmp_path / "alone.arrow"), experiment=m["experiment"],
                                        method=m["method"], tuning=m["tuning"], inits=1, shard=0, n_shards=1,
                                        device="cpu"))
        df = pl.from_arrow(read_arrow(m["out"]))
        assert df.equals(pl.from_arrow(table))
        assert df["method"].to_list() == [m["method"]] * df.height
        for col in ("n_soft", "prefix_len", "soft_positions", "prompt_ids", "prompt_text", "steps", "init_ids"):
            assert df[col].to_list() == alone[col].to_list(), (m["method"], col)
        assert df["kl_min"].to_numpy() == pytest.approx(alone["kl_min"].to_numpy(), rel=1e-5)
        meta = arrow_metadata(table)
        assert meta["tuning"] == arrow_metadata(read_arrow(tmp_path / "alone.arrow"))["tuning"]
        assert meta["tuned_with"] == ["a@soft", "b@hybrid-1", "b@hard"] and meta["work"]["row_steps"] > alone["steps"].sum()
    assert not (tmp_path / "job.ckpt").exists()
