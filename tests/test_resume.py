"""Ctrl-C on a running workflow: Snakemake gets SIGINT (with its process group, as from a terminal)
while a shard is in the middle of a batch; the shard's checkpoint stays, the next run resumes
from it (and says so in Snakemake's output and in the job's log), runs only the steps the
checkpoint did not hold, and the collected table equals that of an uninterrupted run."""

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
import torch
import yaml

from distreach.io import arrow_metadata, read_arrow

from .conftest import save_tiny
from .test_faults import checkpointed_row_steps

REPO = Path(__file__).resolve().parents[1]
SHARD = "results/tuning/tiny/a@soft/shard-0"  # the tuning job's folder (distreach.jobs)


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


def read_checkpoint(path: Path) -> dict | None:
    """The state in a checkpoint file, or None while there is none (files are replaced atomically)."""
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        return None


def job_work(workdir: Path) -> dict:
    """The engine's record of the tuning job's work (row-steps, where it resumed), from the
    provenance the collected table keeps of its shards."""
    (shard,) = arrow_metadata(read_arrow(workdir / "results/collected/a.arrow"))["shards"].values()
    return shard["work"]


@pytest.mark.slow
def test_sigint_to_snakemake_then_rerun_resumes_to_the_same_table(tmp_path):
    model = save_tiny(tmp_path / "src", "llama")
    cfg = config(model)
    ref, run = tmp_path / "reference", tmp_path / "run"
    finish(snakemake(ref, cfg, "results/targets/coarse/tiny.arrow"))
    shutil.copytree(ref, run)  # the model and targets, made once
    finish(snakemake(ref, cfg))
    reference = pl.read_ipc(ref / "results/collected/a.arrow")
    fresh = job_work(ref)
    assert fresh == {"row_steps": reference["steps"].sum(), "resumed_from": None, "batch_rows": [1] * reference.height}

    ckpt = run / Path(SHARD).with_name(".shard-0.ckpt")
    proc = snakemake(run, cfg)
    deadline = time.monotonic() + 300
    state = None
    # wait for a checkpoint that shows the job in its second batch (of five) with steps done: three
    # batches of 150 steps are still ahead of it when the signal goes out
    while proc.poll() is None and time.monotonic() < deadline:
        state = read_checkpoint(ckpt)
        if state is not None and state["lo"] >= 1 and state["batch"] is not None and state["step"] >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the workflow finished before it could be interrupted; make the shard longer"
    assert state is not None and state["batch"] is not None, "no checkpoint in the middle of a batch within 300 s"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: to Snakemake and the jobs it started
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-3000:]
    assert not (run / SHARD).exists(), "an interrupted shard left a result"
    assert ckpt.exists(), "the interrupted shard's checkpoint is gone:\n" + out[-3000:]
    state = read_checkpoint(ckpt)  # where the interrupt left the job: in the middle of a batch
    assert state["batch"] is not None and state["step"] >= 5 and 1 <= state["lo"] < reference.height, state["lo"]
    saved_steps = checkpointed_row_steps(state)

    out = finish(snakemake(run, cfg))
    resumed = [ln for ln in out.splitlines() if "resuming from checkpoint" in ln]
    assert len(resumed) == 1 and str(ckpt.name) in resumed[0] and "rows done" in resumed[0], out[-3000:]
    resumed_at = {"row": state["lo"], "step": state["step"] + 1}
    assert f"the batch from row {resumed_at['row']} at step {resumed_at['step']}" in resumed[0], resumed[0]
    job_log = (run / "logs/tuning/tiny/a@soft/shard-0.log").read_text()
    assert "resuming from checkpoint" in job_log
    assert not ckpt.exists()
    table = pl.read_ipc(run / "results/collected/a.arrow")
    assert table.height == reference.height > 2  # several batches
    assert table.equals(reference), "the resumed workflow's table differs from the uninterrupted one"
    # the rerun did only the work the checkpoint did not hold
    work = job_work(run)
    assert work == {"row_steps": fresh["row_steps"] - saved_steps, "resumed_from": resumed_at,
                    "batch_rows": fresh["batch_rows"]}, (work, fresh, saved_steps)  # the checkpoint's batches too
    assert f"{work['row_steps']} row-steps run after resuming from row {state['lo']}" in job_log
