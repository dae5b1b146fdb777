"""Ctrl-C on a running workflow: Snakemake gets SIGINT (with its process group, as from a terminal)
while a shard is tuning; the shard's checkpoint stays, the next run resumes from it (and says so
in Snakemake's output and in the job's log) and the collected table equals that of an
uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from .conftest import save_tiny

REPO = Path(__file__).resolve().parents[1]
SHARD = "results/tuning/tiny/a@soft/shard-0"  # the tuning job's folder (distreach.bundles)


def config(model: Path) -> dict:
    return {
        "models": {"tiny": {"source": {"local": str(model)}}},
        "targets": {"coarse": {"grid": {"step": 2.0}, "per_level": 1}},
        # long enough to be interrupted (5 batches of 150 steps); a checkpoint after every step
        "tuning": {"max_steps": 150, "patience": 150, "batch_size": 1},
        "checkpoint_seconds": 0,
        "experiments": {"a": {"targets": "coarse", "models": ["tiny"], "inits": 1, "shards": 1}},
        "figures": {},
    }


def snakemake(workdir: Path, cfg: dict, target: str = "results/collected/a.arrow") -> subprocess.Popen:
    """Snakemake in a session of its own, so that its process group is it and its jobs."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", "config.yaml",
           "--cores", "1", target]
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
def test_sigint_to_snakemake_then_rerun_resumes_to_the_same_table(tmp_path):
    model = save_tiny(tmp_path / "src", "llama")
    cfg = config(model)
    ref, run = tmp_path / "reference", tmp_path / "run"
    finish(snakemake(ref, cfg, "results/targets/coarse/tiny.arrow"))
    shutil.copytree(ref, run)  # the model and targets, made once
    finish(snakemake(ref, cfg))
    reference = pl.read_ipc(ref / "results/collected/a.arrow")

    ckpt = run / Path(SHARD).with_name(".shard-0.ckpt")
    proc = snakemake(run, cfg)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # a few steps into the shard
    assert proc.poll() is None, "the workflow finished before it could be interrupted; make the shard longer"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: to Snakemake and the jobs it started
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-3000:]
    assert not (run / SHARD).exists(), "an interrupted shard left a result"
    assert ckpt.exists(), "the interrupted shard's checkpoint is gone:\n" + out[-3000:]

    out = finish(snakemake(run, cfg))
    resumed = [ln for ln in out.splitlines() if "resuming from checkpoint" in ln]
    assert len(resumed) == 1 and str(ckpt.name) in resumed[0] and "rows done" in resumed[0], out[-3000:]
    job_log = (run / "logs/tuning/tiny/a@soft/shard-0.log").read_text()
    assert "resuming from checkpoint" in job_log
    assert not ckpt.exists()
    table = pl.read_ipc(run / "results/collected/a.arrow")
    assert table.height == reference.height > 2  # several batches
    assert table.equals(reference), "the resumed workflow's table differs from the uninterrupted one"
