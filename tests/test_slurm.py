"""The workflow on a real Slurm cluster: `snakemake --profile slurm` from the repository root,
with the test overlay profile tests/slurm/profile, on a tiny config's whole DAG.

Needs a running Slurm (`.ci/run` starts a single-node one with tests/slurm/start-local-slurm.sh);
skipped without one, unless DISTREACH_REQUIRE_SLURM=1 (as in CI), where it fails instead."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import save_tiny
from .test_envs import ALL_RULES, RUN_NOTHING

REPO = Path(__file__).resolve().parents[1]


def slurm_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return "UP" in ping.stdout


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not slurm_up() and os.environ.get("DISTREACH_REQUIRE_SLURM") != "1",
        reason="no Slurm cluster reachable (start one with tests/slurm/start-local-slurm.sh)",
    ),
]


def slurm_config(sources: dict) -> dict:
    """Every stage once: models (one random-init copy), vanilla and POS targets, tuning with two
    shards, collect, Figs. 1, 6, 12 and 13."""
    small = {"cpus": 1, "mem_mb": 1000, "runtime": 10}
    return {
        "entropy_unit": "bits",
        "models": {
            "tiny": {"source": {"local": sources["llama"]}, **small},
            "tiny-random": {"source": {"random_init": "tiny", "seed": 1}, **small},
        },
        "targets": {
            "vanilla": {"grid": {"step": 3.0}, "per_level": 1},
            "pos": {"kind": "pos", "tags": ["NOUN"], "n_tokens": 3, "draws": 2},
        },
        "pos": {"min_pos_prob": 0.5},
        "tuning": {"max_steps": 10, "patience": 5},
        "experiments": {
            "vanilla": {"targets": "vanilla", "models": ["tiny"], "inits": 1, "shards": 2},
            "random-init": {"targets": "vanilla", "models": ["tiny-random"], "inits": 1},
            "pos": {"targets": "pos", "models": ["tiny"], "inits": 1},
        },
        "figures": {
            "fig01": {"experiment": "vanilla"},
            "fig06": {"experiments": ["vanilla", "random-init"], "pairs": {"tiny": "tiny-random"}},
            "fig12": {"models": ["tiny"]},
            "fig13": {"experiment": "pos"},
        },
    }


def scontrol(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def test_tiny_dag_under_slurm(tmp_path):
    assert slurm_up(), "DISTREACH_REQUIRE_SLURM=1 but no Slurm cluster answers `scontrol ping`"
    sources = {"llama": str(save_tiny(tmp_path / "src-llama", "llama"))}
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(slurm_config(sources)))
    workdir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "snakemake", "--profile", "slurm", "--workflow-profile", "tests/slurm/profile",
        "--configfile", str(cfg), "--directory", str(workdir),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    log = proc.stdout + proc.stderr
    print(log[-5000:])
    assert proc.returncode == 0, log[-3000:]
    assert "Using profiles slurm and workflow specific profile tests/slurm/profile" in log
    for fig in ("fig01", "fig06", "fig12", "fig13"):
        for ext in ("html", "png", "svg"):
            assert (workdir / f"results/figures/{fig}.{ext}").stat().st_size > 1000
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)
    jobs = {jid: scontrol(jid) for jid, _ in submitted}
    rules = {jid: info.get("Comment", "") for jid, info in jobs.items()}
    # the figures were drawn by Slurm jobs, whose logs the plugin kept
    for fig in ("fig01", "fig06", "fig12", "fig13"):
        assert any(c.startswith("rule_figure_wildcards_") and c.endswith(fig) for c in rules.values()), (fig, rules)
    assert all(Path(path.rstrip(").")).exists() for _, path in submitted)
    # tuning jobs asked for a GPU and were scheduled on the node's (fake) one; nothing else asked
    gpu = {rules[j] for j, info in jobs.items() if "gpu" in info.get("TresPerJob", "")}
    assert gpu and all(c.startswith("rule_tune_job") for c in gpu), gpu
    assert all(jobs[j].get("JobState") == "COMPLETED" for j in jobs), {j: i.get("JobState") for j, i in jobs.items()}
    # a second run finds nothing to do
    again = subprocess.run([*cmd, "-n"], cwd=REPO, capture_output=True, text=True)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_grouped_shards_run_in_one_submission_on_one_gpu(tmp_path):
    """The profile's grouping option: two tuning jobs in one Slurm job asking for one GPU."""
    assert slurm_up(), "DISTREACH_REQUIRE_SLURM=1 but no Slurm cluster answers `scontrol ping`"
    sources = {"llama": str(save_tiny(tmp_path / "src-llama", "llama"))}
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(slurm_config(sources)))
    cmd = [
        sys.executable, "-m", "snakemake", "results/collected/vanilla.arrow", "--profile", "slurm",
        "--workflow-profile", "tests/slurm/profile", "--configfile", str(cfg), "--directory", str(tmp_path / "run"),
        "--groups", "tune_job=tuning", "--group-components", "tuning=2", "--resources", "gpu=1",
        "--set-resource-scopes", "gpu=local",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    jobs = {jid: scontrol(jid) for jid in re.findall(r"submitted with SLURM jobid (\d+)", log)}
    tuning = [info for info in jobs.values() if info.get("Comment", "").startswith("rule_tuning_tune_job")]
    assert len(tuning) == 1, jobs  # both shards of 'vanilla' in one submission
    assert tuning[0].get("TresPerJob") == "gres:gpu:1" and tuning[0].get("JobState") == "COMPLETED"
    assert len(list((tmp_path / "run/results/tuning/tiny/vanilla@soft").glob("shard-*/vanilla@soft.arrow"))) == 2


def test_paper_stand_ins_dag_under_slurm(tmp_path):
    """configs/paper-stand-ins.yaml, the paper study on stand-ins of its models, runs end to end
    through the Slurm profile: every rule as Slurm jobs, every figure, the claims report, and a
    model of every paper architecture."""
    assert slurm_up(), "DISTREACH_REQUIRE_SLURM=1 but no Slurm cluster answers `scontrol ping`"
    cfg = yaml.safe_load((REPO / "configs/paper-stand-ins.yaml").read_text())
    workdir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "snakemake", "--profile", "slurm", "--workflow-profile", "tests/slurm/profile",
        "--configfile", "configs/paper-stand-ins.yaml", "--directory", str(workdir),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    log = proc.stdout + proc.stderr
    print(log[-5000:])
    assert proc.returncode == 0, log[-3000:]
    for fig in cfg["figures"]:
        for ext in ("html", "png", "svg"):
            assert (workdir / f"results/figures/{fig}.{ext}").stat().st_size > 1000, fig
    claims = (workdir / "results/report/claims.md").read_text()
    rows = re.findall(r"^\| (C\d) \| (.*) \| \*\*(holds|contradicted|not shown|too few data)\*\*(?: \([^|]*\))? \|$",
                      claims, re.M)
    assert {claim for claim, _, _ in rows} == {f"C{k}" for k in range(1, 10)}, claims  # every claim, with a verdict
    assert not [row for row in rows if "not configured" in row[1]], claims  # on the figures' data
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log)
    comments = [scontrol(j).get("Comment", "") for j in submitted]
    ran = {c.removeprefix("rule_").split("_wildcards")[0] for c in comments}
    for fig in cfg["figures"]:
        assert any(c.startswith("rule_figure") and c.endswith(fig) for c in comments), (fig, comments)
    rules = set(ALL_RULES) - set(RUN_NOTHING)  # every rule that runs a job
    missing = {r for r in rules if not any(c == r or c.startswith(f"{r}_") for c in ran)}
    assert not missing, f"rules that ran no Slurm job: {sorted(missing)}"
    archs = {json.loads((workdir / f"results/models/{m}/distreach_model.json").read_text())["architecture"]
             for m in cfg["models"]}
    assert archs == {"GPT2LMHeadModel", "LlamaForCausalLM", "FalconForCausalLM", "Qwen2ForCausalLM"}, archs
    # Qwen2 stand-ins ran without a BOS token, the others with one
    import polars as pl

    from distreach.io import read_arrow

    pos = pl.from_arrow(read_arrow(workdir / "results/collected/pos.arrow"))
    bos = dict(pos.group_by("model").agg(pl.col("bos").unique()).iter_rows())
    assert set(bos) == set(cfg["experiments"]["pos"]["models"]) and {m.startswith("qwen") for m in bos} == {True, False}
    assert all(v == (["none"] if m.startswith("qwen") else ["bos"]) for m, v in bos.items()), bos
