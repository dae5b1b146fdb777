"""Which experiments share a tuning job (distreach.jobs), and the workflow's plan of them."""

import json
import re
from pathlib import Path

import pytest

from distreach.jobs import MODEL_MEM_MB, MODEL_RUNTIME, experiment_jobs, experiment_tables, target_model, tuning_jobs
from distreach.errors import DistreachError

from .conftest import save_tiny
from .test_workflow import planned_jobs, snakemake, tiny_config, tiny_sources  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]


def config(shared: bool) -> dict:
    exp = {"models": ["m"], "methods": ["soft"], "inits": 1, "shards": 1}
    return {
        "share_jobs": shared,
        "tuning": {"lr": 0.1, "prefix_len": 5},
        "methods": {"hybrid-1": {"method": "hybrid", "n_soft": 1}, "short": {"method": "soft", "prefix_len": 2}},
        "experiments": {
            "a": {**exp, "targets": "t1", "shards": 2},
            "b": {**exp, "targets": "t2", "methods": ["soft", "hybrid-1"]},
            "c": {**exp, "targets": "t1", "tuning": {"prefix_len": 3}},
            "d": {**exp, "targets": "t3", "models": ["m", "n"]},
            "e": {**exp, "targets": "t3", "methods": ["short"], "tuning": {"prefix_len": 3, "lr": 0.05}},
        },
    }


def test_experiments_sharing_jobs_share_those_whose_rows_one_batch_can_tune():
    cfg = config(True)
    cfg["methods"]["gcg-8"] = {"method": "gcg", "gcg_width": 8}
    cfg["experiments"]["f"] = {"models": ["m"], "methods": ["hard", "gcg-8"], "inits": 1, "shards": 1, "targets": "t4"}
    cfg["experiments"]["g"] = {"models": ["m"], "methods": ["gcg-8"], "inits": 2, "shards": 1, "targets": "t1"}
    cfg["methods"]["fast"] = {"lr": 0.5}  # no method: TuneConfig's (soft)
    cfg["experiments"]["h"] = {"models": ["m"], "methods": ["fast"], "inits": 1, "shards": 1, "targets": "t1"}
    jobs = tuning_jobs(cfg)
    assert sorted(jobs) == ["m/gcg-8/shard-0", "m/tune+lr=0.05+prefix_len=2/shard-0", "m/tune+lr=0.5/shard-0",
                            "m/tune+prefix_len=3/shard-0", "m/tune/shard-0", "m/tune/shard-1", "n/tune/shard-0"]
    # soft, hybrid and hard rows of one prefix length and otherwise equal settings: one job, a shard per method
    assert [(m["experiment"], m["method"]) for m in jobs["m/tune/shard-0"]["shards"]] == [
        ("a", "soft"), ("b", "soft"), ("b", "hybrid-1"), ("d", "soft"), ("f", "hard")]
    assert [(m["experiment"], m["shard"], m["n_shards"]) for m in jobs["m/tune/shard-1"]["shards"]] == [("a", 1, 2)]
    assert [(m["experiment"], m["method"]) for m in jobs["m/gcg-8/shard-0"]["shards"]] == [("f", "gcg-8"), ("g", "gcg-8")]
    tuning = {(m["experiment"], m["method"]): m["tuning"] for job in jobs.values() for m in job["shards"]}
    assert tuning["b", "hybrid-1"] == {"lr": 0.1, "prefix_len": 5, "method": "hybrid", "n_soft": 1}
    assert tuning["c", "soft"] == {"lr": 0.1, "prefix_len": 3, "method": "soft"}
    # settings apply global, then the experiment's, then the method's; a job is named by those that differ
    assert tuning["e", "short"] == {"lr": 0.05, "prefix_len": 2, "method": "soft"}
    assert tuning["g", "gcg-8"] == {"lr": 0.1, "prefix_len": 5, "method": "gcg", "gcg_width": 8}
    assert experiment_jobs(jobs, "a") == ["m/tune/shard-0", "m/tune/shard-1"]
    assert experiment_tables(jobs, "b", lambda key: f"results/tuning/{key}") == [
        "results/tuning/m/tune/shard-0/b@soft.arrow", "results/tuning/m/tune/shard-0/b@hybrid-1.arrow"]


def test_the_job_planner_imports_no_torch():
    """Snakemake plans the jobs when it reads the rules: distreach.jobs (and the method facts it shares
    with the engine, distreach.methods) load without torch."""
    import subprocess
    import sys

    code = "import sys, distreach.jobs; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_config_check_of_every_jobs_tuning_settings_imports_no_torch():
    """Snakemake checks the config when it reads the rules, in every job's process on a cluster too:
    the tuning settings of every job (distreach.settings) are checked without torch."""
    import subprocess
    import sys

    code = ("import sys, yaml; from snakemake.utils import validate; from distreach.config import check_config; "
            "check_config(yaml.safe_load(open('config.yaml')), 'schemas/config.schema.yaml', validate); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


def test_experiments_not_sharing_jobs_have_jobs_of_their_own():
    jobs = tuning_jobs(config(False))
    assert sorted(jobs) == ["m/a@soft/shard-0", "m/a@soft/shard-1", "m/b@hybrid-1/shard-0", "m/b@soft/shard-0",
                            "m/c@soft+prefix_len=3/shard-0", "m/d@soft/shard-0", "m/e@short+lr=0.05+prefix_len=3/shard-0",
                            "n/d@soft/shard-0"]
    assert all(len(job["shards"]) == 1 for job in jobs.values())


def test_job_names_are_path_safe_and_never_shared_by_jobs_of_other_settings():
    cfg = config(True)
    cfg["experiments"]["c"]["tuning"] = {"init": "normal", "soft_positions": [0, 2], "stop_kl_nats": 0.001}
    names = [key.split("/")[1] for key in tuning_jobs(cfg)]
    assert "tune+init=normal+stop_kl_nats=0.001" in names  # soft_positions: a setting rows of one batch may differ in
    own = [key.split("/")[1] for key in tuning_jobs({**cfg, "share_jobs": False})]
    assert "c@soft+init=normal+soft_positions=h" in " ".join(own)  # a list: a digest
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=+@-]*", n) for n in names + own), names  # rules/common.smk's pattern
    cfg["experiments"]["b"]["tuning"] = {"init": "1"}
    cfg["experiments"]["d"]["tuning"] = {"init": 1}  # the same name, other settings
    with pytest.raises(DistreachError, match="experiments.d: its tuning job m/tune\\+init=1/shard-0"):
        tuning_jobs(cfg)


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_the_workflow_plans_one_tune_job_per_job(tmp_path, tiny_sources):  # noqa: F811
    # shared: tiny (soft, hybrid-1 and hard) and tiny-gpt2 (2 shards each), tiny tune+prefix_len=2, tiny-random;
    # each experiment on its own: 20 (vanilla 2 models x 2 shards, methods 3, migrated 2, pos 2, nine more)
    for shared, jobs in ((True, 6), (False, 20)):
        cfg = {**tiny_config(tiny_sources), "share_jobs": shared}
        cfg["experiments"]["random-init"]["tuning"] = {"init": "normal", "bos": "none"}  # settings in the job's name
        proc = snakemake(tmp_path / str(shared), cfg, "-n")
        assert planned_jobs(proc)["tune_job"] == jobs
        # a job's runtime request: the model's runtime (MODEL_RUNTIME minutes by default) per shard it tunes (an
        # experiment's rows of one method), what the jobs of those shards would ask for without sharing; its memory
        # the model's (MODEL_MEM_MB by default)
        runtime = {f"{m['model']}/{m['job']}/shard-{m['shard']}": int(m["runtime"]) for m in re.finditer(
            r"rule tune_job:.*?wildcards: model=(?P<model>[^,]+), job=(?P<job>[^,]+), shard=(?P<shard>\d+).*?runtime=(?P<runtime>\d+)",
            proc.stdout, re.S)}
        planned = tuning_jobs(planned_config(cfg))
        assert runtime == {key: MODEL_RUNTIME * len(job["shards"]) for key, job in planned.items()}
        mem = re.findall(r"rule tune_job:.*?mem_mb=(\d+)", proc.stdout, re.S)
        assert len(mem) == len(planned) and {int(m) for m in mem} == {MODEL_MEM_MB}


def planned_config(cfg: dict) -> dict:
    """``cfg`` with the schema's defaults filled in, as the workflow reads it."""
    from snakemake.utils import validate

    from distreach.config import check_config
    from distreach.schema import SCHEMA_PATH

    cfg = json.loads(json.dumps(cfg))
    check_config(cfg, SCHEMA_PATH, validate)
    return cfg


@pytest.mark.parametrize("old,new", [("bundle_experiments", "renamed to share_jobs"),
                                     ("twins", "a stand-in is now a model source: models.<name>.source: {stand_in: ")])
def test_a_key_of_an_earlier_version_is_refused_naming_its_replacement(tmp_path, old, new):
    """A config with ``bundle_experiments`` or a ``twins`` section (both renamed) stops before
    any schema check with one line naming what replaced it."""
    from snakemake.utils import validate

    from distreach.config import check_config
    from distreach.schema import SCHEMA_PATH

    cfg = tiny_config({arch: str(save_tiny(tmp_path / arch, arch)) for arch in ("llama", "gpt2")})
    check_config(dict(cfg), SCHEMA_PATH, validate)  # the config without the old key passes
    with pytest.raises(DistreachError) as err:
        check_config({**cfg, old: True}, SCHEMA_PATH, validate)
    assert str(err.value).startswith(f"config key {old}: {new}")
    assert "\n" not in str(err.value)


def test_a_random_init_model_reads_its_bases_targets_where_they_depend_on_the_vocabulary_alone():
    families = {
        "vanilla": {"kind": "vanilla"}, "outlier": {"kind": "outlier"}, "pos": {"kind": "pos"},
        "lm": {"kind": "lm"}, "lm-matched": {"kind": "matched", "of": "lm"}, "lm-shuffled": {"kind": "shuffled", "of": "lm"},
        "vanilla-matched": {"kind": "matched", "of": "vanilla"},
        "migrated": {"kind": "migrated", "of": "lm", "source": "other"},  # another model's LM targets, on this vocabulary
        "a": {"kind": "matched", "of": "b"}, "b": {"kind": "shuffled", "of": "a"},  # a cycle (Snakemake refuses it)
        "plain": {},  # the schema's default kind: vanilla
    }
    cfg = {"targets": families, "models": {"base": {"source": {"local": "x"}}, "other": {"source": {"local": "y"}},
                                           "copy": {"source": {"random_init": "base", "seed": 1}}}}
    shared = {f for f in families if target_model(cfg, f, "copy") == "base"}
    assert shared == {"vanilla", "outlier", "pos", "vanilla-matched", "migrated", "plain"}
    assert {target_model(cfg, f, "copy") for f in families if f not in shared} == {"copy"}
    assert {target_model(cfg, f, m) for f in families for m in ("base", "other")} == {"base", "other"}
    assert all(target_model(cfg, f, "other") == "other" for f in families)
