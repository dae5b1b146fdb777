"""distreach.memory: a CPU batch holds only the rows that fit in the free memory."""

import logging

import numpy as np
import pytest
import torch

from distreach import memory
from distreach.engine import TuneConfig, tune
from distreach.errors import DistreachError

from .test_engine import targets


def test_saved_bytes_counts_each_storage_once_and_not_the_parameters():
    w = torch.nn.Parameter(torch.randn(8, 8))
    x = torch.randn(4, 8, requires_grad=True)

    def forward():
        h = (x @ w).exp()  # saves x (for w's gradient), w (for x's: a parameter) and exp's output
        return h.expand(3, 4, 8).sum() + h.sum()  # a view of h: no new storage

    assert memory.saved_bytes(forward, [w]) == 2 * 4 * 8 * 4  # x and h, fp32
    assert memory.saved_bytes(forward, []) == 2 * 4 * 8 * 4 + 8 * 8 * 4  # and w


def test_free_memory_is_capped_by_the_cgroups_limit(tmp_path, monkeypatch):
    limit, usage, stat = tmp_path / "memory.max", tmp_path / "memory.current", tmp_path / "memory.stat"
    monkeypatch.setattr(memory, "_cgroup_files", lambda: [(limit, usage, stat, "inactive_file")])
    limit.write_text("max\n")
    usage.write_text("1000\n")
    stat.write_text("anon 600\ninactive_file 400\n")
    machine = memory.free_bytes()  # no limit: the machine's available memory
    assert machine > 2**20
    limit.write_text(f"{2**20 + 600}\n")
    assert memory.free_bytes() == 2**20  # a Slurm job's cap, less what it uses (reclaimable page cache not counted)
    stat.unlink()  # no page cache known: all of the usage counts
    assert memory.free_bytes() == 2**20 - 400
    usage.write_text(f"{2**21}\n")
    assert memory.free_bytes() == 0


@pytest.mark.parametrize("method", ["soft", "gcg"])
def test_a_cpu_batch_holds_the_rows_that_fit_and_tunes_them_alike(tiny_llama, monkeypatch, caplog, method):
    import distreach.engine as engine

    p = targets(tiny_llama.vocab_size, 7, seed=4)
    cfg = TuneConfig(method=method, max_steps=10, patience=10,
                     **({"gcg_width": 4, "readable": False} if method == "gcg" else {}))
    expected = tune(tiny_llama, p, list(range(7)), cfg)  # all 7 rows in one batch
    per_row = {}

    def measured(step_forward, params, vocab, wanted, where, extra):
        params = list(params)
        one = memory.saved_bytes(lambda: step_forward(1), params)
        per_row["bytes"] = (memory.saved_bytes(lambda: step_forward(2), params) - one
                            + memory.PER_ROW_VOCAB_ARRAYS * 4 * vocab + extra)
        per_row["extra"] = extra
        return real(step_forward, params, vocab, wanted, where, extra)

    real = memory.rows_that_fit
    monkeypatch.setattr(engine, "rows_that_fit", measured)
    tune(tiny_llama, p[:2], [0, 1], cfg)
    # gcg's step holds every position's scores over the input vocabulary besides
    assert per_row["extra"] == (4 * cfg.prefix_len * tiny_llama.embeddings.shape[0] if method == "gcg" else 0)
    # free memory for 3 rows at the headroom: batches of 3, 3 and 1 rows
    monkeypatch.setattr(memory, "free_bytes", lambda: int(3.5 * per_row["bytes"] / memory.HEADROOM))
    sizes = []
    with caplog.at_level(logging.WARNING, logger="distreach.memory"):
        got = tune(tiny_llama, p, list(range(7)), cfg, on_step=lambda step, n: sizes.append(n) if step == 0 else None)
    assert sizes == [3, 3, 1]
    assert "a batch of 7 rows needs about" in caplog.text and "batches of 3 rows" in caplog.text
    np.testing.assert_allclose(got.kl_min, expected.kl_min, rtol=1e-5)
    assert (got.steps == expected.steps).all()


def test_a_step_no_row_of_which_fits_is_refused_before_tuning(tiny_llama, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda: 1000)
    steps = []
    with pytest.raises(DistreachError, match=r"^tuning model tiny-llama with prompts of 5 positions: one row's step "
                                             r"needs about [\d.]+ GiB and this process has 0\.00 GiB free: use a "
                                             r"shorter prompt, a smaller model or a GPU$"):
        tune(tiny_llama, targets(tiny_llama.vocab_size, 2), [0, 1], TuneConfig(max_steps=5),
             on_step=lambda step, n: steps.append(step))
    assert steps == []
