"""distreach.memory: a CPU batch holds only the rows that fit in the free memory."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from distreach import memory
from distreach.engine import TuneConfig, tune
from distreach.errors import DistreachError

from .conftest import load_script
from .test_engine import targets

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


def test_saved_bytes_counts_each_storage_once_and_not_the_parameters():
    w = torch.nn.Parameter(torch.randn(8, 8))
    x = torch.randn(4, 8, requires_grad=True)

    def forward():
        h = (x @ w).exp()  # mm saves x (for w's gradient) and w (a parameter); exp its output h
        return (h * h).sum()  # saves h twice more: one storage

    assert memory.saved_bytes(forward, [w]) == 2 * 4 * 8 * 4  # x and h, fp32
    assert memory.saved_bytes(forward, []) == 2 * 4 * 8 * 4 + 8 * 8 * 4  # and w


def fake_machine(tmp_path: Path, cgroup_lines: str, levels: dict[str, tuple[str, int, int]]) -> tuple[Path, Path]:
    """A /proc with 100 MiB available and ``cgroup_lines``, and a cgroup tree whose folders
    ``levels`` name hold (limit, usage, inactive page cache), in v2's file names or, under
    memory/, v1's."""
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: {200 * 1024} kB\nMemAvailable: {100 * 1024} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup_lines)
    for folder, (limit, usage, inactive) in levels.items():
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        v1 = folder.startswith("memory")
        (d / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(limit + "\n")
        (d / ("memory.usage_in_bytes" if v1 else "memory.current")).write_text(f"{usage}\n")
        (d / "memory.stat").write_text(f"anon {usage - inactive}\n{'total_' if v1 else ''}inactive_file {inactive}\n")
    return proc, root


def test_free_memory_is_capped_by_the_cgroups_above_the_process(tmp_path):
    # Slurm's cgroup v2 layout: the job's limit sits two levels above the task the process is in
    proc, root = fake_machine(tmp_path, "0::/job_1/step_0/task_0\n", {
        "job_1": (str(10 * MiB), 4 * MiB, 1 * MiB), "job_1/step_0": ("max", 3 * MiB, 0),
        "job_1/step_0/task_0": ("max", 3 * MiB, 0)})
    assert memory.free_bytes(proc, root) == 7 * MiB  # 10 - 4 + the reclaimable 1
    (root / "job_1" / "memory.stat").unlink()  # no page cache known: all the usage counts
    assert memory.free_bytes(proc, root) == 6 * MiB
    (root / "job_1" / "memory.max").write_text("max\n")  # no limit anywhere: the machine's available memory
    assert memory.free_bytes(proc, root) == 100 * MiB
    # cgroup v1's memory controller, a limit on the process's own cgroup (v1 writes a huge number for none)
    proc, root = fake_machine(tmp_path / "v1", "4:cpu,cpuacct:/slurm/job_2\n3:memory:/slurm/job_2\n", {
        "memory/slurm": (str(2**63 - 4096), 50 * MiB, 0), "memory/slurm/job_2": (str(5 * MiB), 2 * MiB, MiB // 2)})
    assert memory.free_bytes(proc, root) == 3 * MiB + MiB // 2
    assert memory.free_bytes(tmp_path / "nowhere", root) is None  # not Linux: no check


def fake_step(saved_per_row: int, saved_fixed: int):
    """A step whose forward pass for n rows saves a tensor of n * saved_per_row + saved_fixed bytes."""
    return lambda n: torch.ones((n * saved_per_row + saved_fixed) // 4, requires_grad=True).exp()


def test_rows_that_fit_in_the_free_memory(monkeypatch, caplog):
    vocab, scratch = 10, (100, 5000)
    # per row: 1024 saved, 6 arrays of 10 fp32 (240) and 100 of scratch: 1364 bytes; 5000 fixed
    free = {"bytes": int((3 * 1364 + 5000) / memory.HEADROOM) + 2}
    monkeypatch.setattr(memory, "free_bytes", lambda: free["bytes"])
    step = fake_step(1024, 256)
    with caplog.at_level(logging.WARNING, logger="distreach.memory"):
        assert memory.rows_that_fit(step, [], vocab, 100, 8, "here", scratch) == 3
    assert "here: a batch of 8 rows needs about" in caplog.text and "batches of 3 rows" in caplog.text
    assert memory.rows_that_fit(step, [], vocab, 100, 2, "here", scratch) == 2  # fewer wanted: all of them
    # one row alone: all it saves counts as that row's (1280), 1620 a row
    free["bytes"] = int((1620 + 5000) / memory.HEADROOM) + 2
    assert memory.rows_that_fit(step, [], vocab, 1, 1, "here", scratch) == 1
    free["bytes"] -= 4
    with pytest.raises(DistreachError, match=r"^here: a batch of one row needs about 0\.00 GiB free \(with headroom\) "
                                             r"and this process has 0\.00 GiB: free memory, or use a smaller model or a GPU$"):
        memory.rows_that_fit(step, [], vocab, 1, 1, "here", scratch)
    free["bytes"] = None  # not known: no check
    assert memory.rows_that_fit(step, [], vocab, 100, 8, "here", scratch) == 8


SETTINGS = {"soft": {}, "gcg": {"gcg_width": 4, "readable": False}, "hard": {"candidates": 4}}


@pytest.mark.parametrize("method", list(SETTINGS))
def test_a_cpu_batch_holds_the_rows_that_fit_and_tunes_them_alike(tiny_llama, monkeypatch, method):
    """The engine measures its step (the batch's own scratch memory included) and tunes in the
    batches that fit; its rows end as in one batch."""
    p = targets(tiny_llama.vocab_size, 7, seed=4)
    cfg = TuneConfig(method=method, max_steps=10, patience=10, **SETTINGS[method])
    expected = tune(tiny_llama, p, list(range(7)), cfg)  # all 7 rows in one batch
    asked = []
    real_estimate = memory.estimate

    def estimate(step_forward, params, vocab, rows, scratch):
        asked.append(scratch)
        per_row, fixed = real_estimate(step_forward, params, vocab, rows, scratch)
        assert per_row > memory.PER_ROW_VOCAB_ARRAYS * 4 * vocab + scratch[0]  # the forward pass saved something
        return 1000, 0  # say 1000 bytes a row

    monkeypatch.setattr(memory, "estimate", estimate)
    monkeypatch.setattr(memory, "free_bytes", lambda: int(3.5 * 1000 / memory.HEADROOM))
    sizes = []
    got = tune(tiny_llama, p, list(range(7)), cfg, on_step=lambda step, n: sizes.append(n) if step == 0 else None)
    assert sizes == [3, 3, 1] and got.work["batch_rows"] == [3, 3, 1]  # the batches the result records
    np.testing.assert_allclose(got.kl_min, expected.kl_min, rtol=1e-5)
    assert (got.steps == expected.steps).all()
    # the candidates' scoring besides: gcg's more per row, and a fixed part; hard's of several candidates per row
    per_row, fixed = asked[0]
    assert {"soft": per_row == fixed == 0, "hard": per_row > 0 and fixed == 0,
            "gcg": per_row > 4 * cfg.prefix_len * tiny_llama.embeddings.shape[0] and fixed > 0}[method]


def test_a_step_no_row_of_which_fits_is_refused_before_tuning(tiny_llama, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda: 1000)
    steps = []
    with pytest.raises(DistreachError, match=r"^tuning model tiny-llama with prompts of 5 positions: a batch of one row "
                                             r"needs about"):
        tune(tiny_llama, targets(tiny_llama.vocab_size, 2), [0, 1], TuneConfig(max_steps=5),
             on_step=lambda step, n: steps.append(step))
    assert steps == []


class Stop(Exception):
    pass


def test_a_checkpointed_batch_that_no_longer_fits_is_refused(tiny_llama, monkeypatch, tmp_path):
    p = targets(tiny_llama.vocab_size, 4, seed=2)
    cfg, ckpt = TuneConfig(max_steps=30, patience=30), tmp_path / "c.ckpt"

    def stop(step, active):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):  # interrupted in the middle of its batch of 4 rows
        tune(tiny_llama, p, list(range(4)), cfg, on_step=stop, checkpoint=ckpt, checkpoint_seconds=0)
    monkeypatch.setattr(memory, "estimate", lambda *args: (1000, 0))
    monkeypatch.setattr(memory, "free_bytes", lambda: int(2.5 * 1000 / memory.HEADROOM))  # 2 rows fit now
    with pytest.raises(DistreachError, match=rf"holds a batch of 4 rows, more than fit in the memory free now \(2\)"):
        tune(tiny_llama, p, list(range(4)), cfg, checkpoint=ckpt)
    monkeypatch.setattr(memory, "free_bytes", lambda: int(4.5 * 1000 / memory.HEADROOM))
    assert tune(tiny_llama, p, list(range(4)), cfg, checkpoint=ckpt).work["resumed_from"] == {"row": 0, "step": 5}


RECORDED = REPO / "benchmarks" / "results" / "cpu" / "memory-check.json"


def test_the_headroom_covers_every_measured_peak_and_the_readme_shows_them():
    """benchmarks/memory_check.py's recorded peaks, each over the estimate of its batch: the
    share of the free memory a batch plans for leaves room for the largest."""
    bench = load_script(REPO / "benchmarks" / "memory_check.py")
    res = json.loads(RECORDED.read_text())
    assert {r["method"] for r in res["runs"]} == {"soft", "hard", "hybrid", "gcg"}
    assert max(r["peak_bytes"] / r["estimate_bytes"] for r in res["runs"]) <= 1 / memory.HEADROOM
    readme = (REPO / "benchmarks" / "README.md").read_text()
    assert bench.table(res) in readme and bench.summary(res) in readme
