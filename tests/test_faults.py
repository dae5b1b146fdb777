"""Faults during tuning: a shard killed with SIGKILL resumes to bit-identical results, running
only the steps that were left; NaN/inf rows are retried in fp32 or marked failed, never left as
a silent number."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from distreach import memory, tuning
from distreach.io import arrow_metadata, read_arrow, write_arrow
from distreach.settings import tuning_config
from distreach.tuning import run_shard
from distreach.vanilla import EntropyGrid, VanillaSettings, vanilla_targets

REPO = Path(__file__).resolve().parents[1]
RUN = """
import logging, os, signal, sys
logging.basicConfig(level=logging.INFO)
from distreach.checkpoint import Checkpoint
from distreach.settings import tuning_config
from distreach.tuning import run_shard

if sys.argv[5] == "kill":  # SIGKILL right after the first checkpoint taken mid-batch, with some rows already gone
    save = Checkpoint.save

    def save_then_kill(self, state):
        save(self, state)
        batch = state.get("batch")
        if batch is not None and 0 < len(batch["active"]) < 6 and "adamw" in batch:
            os.kill(os.getpid(), signal.SIGKILL)

    Checkpoint.save = save_then_kill
run_shard(model_dir=sys.argv[1], targets_path=sys.argv[2], out_path=sys.argv[3], experiment="e", method="hybrid",
          tuning=tuning_config({"method": "hybrid", "max_steps": 400, "patience": 30, "batch_size": 6, "prefix_len": 4, "n_soft": 2}),
          inits=2, shard=0, n_shards=1, device="cpu", dtype="fp32", threads=1, checkpoint_seconds=float(sys.argv[4]))
"""


def targets_file(tmp_path) -> Path:
    path = tmp_path / "t.arrow"
    write_arrow(vanilla_targets(93, EntropyGrid(step=2.0, unit="bits"), VanillaSettings(per_level=1)), path)
    return path


def shard(model_dir, targets, out, every="60", kill=False):
    return subprocess.Popen([sys.executable, "-c", RUN, str(model_dir), str(targets), str(out), every, "kill" if kill else "-"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkilled_shard_resumes_to_identical_results(tiny_dirs, tmp_path):
    targets = targets_file(tmp_path)
    reference = tmp_path / "reference.arrow"
    assert shard(tiny_dirs["llama"], targets, reference).wait() == 0

    out = tmp_path / "resumed.arrow"
    ckpt = out.with_name(f".{out.name}.ckpt")
    proc = shard(tiny_dirs["llama"], targets, out, every="0", kill=True)
    assert proc.wait(timeout=300) == -signal.SIGKILL
    state = torch.load(ckpt, weights_only=True)
    batch = state["batch"]  # the kill landed mid-batch, after rows had left it (trimmed AdamW state)
    assert batch is not None and state["step"] > 0 and 0 < len(batch["active"]) < 6 and len(batch["theta"]) == len(batch["active"])
    assert not out.exists()  # no partial result for a later rule to read
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".resumed.arrow.") and p != ckpt]
    saved_steps = checkpointed_row_steps(state)

    done = shard(tiny_dirs["llama"], targets, out)
    log, _ = done.communicate()
    assert done.returncode == 0, log
    assert "resuming from" in log
    assert not ckpt.exists()
    a, b = read_arrow(reference), read_arrow(out)
    assert a.num_rows == b.num_rows > 6  # several batches
    assert pl.from_arrow(a).equals(pl.from_arrow(b)), "resumed shard differs from the uninterrupted one"  # NaN == NaN
    # the rerun ran only the steps the checkpoint did not hold, from where it was saved
    fresh, resumed = arrow_metadata(a)["work"], arrow_metadata(b)["work"]
    batches = [state["bs"]] * (a.num_rows // state["bs"]) + ([a.num_rows % state["bs"]] if a.num_rows % state["bs"] else [])
    assert fresh == {"row_steps": sum(a.column("steps").to_pylist()), "resumed_from": None, "batch_rows": batches}
    assert resumed["resumed_from"] == {"row": state["lo"], "step": state["step"] + 1}
    assert resumed["batch_rows"] == batches  # the batches finished before the kill counted with the rest
    assert resumed["row_steps"] == fresh["row_steps"] - saved_steps and saved_steps > 0
    assert f"{resumed['row_steps']} row-steps run after resuming from row {state['lo']} at step {state['step'] + 1}" in log


def checkpointed_row_steps(state: dict) -> int:
    """The row-steps a checkpoint holds: those of its finished batches and of its current batch."""
    recs = [p["steps"] for p in state["parts"]] + ([state["batch"]["rec"]["steps"]] if state["batch"] else [])
    return int(sum(int(r.sum()) for r in recs))


def test_an_unreadable_checkpoint_is_ignored(tiny_dirs, tmp_path, caplog):
    targets = targets_file(tmp_path)
    out = tmp_path / "s.arrow"
    out.with_name(f".{out.name}.ckpt").write_bytes(b"not a checkpoint")
    cfg = tuning_config({"max_steps": 5})
    run_shard(model_dir=str(tiny_dirs["llama"]), targets_path=str(targets), out_path=str(out), experiment="e",
              method="soft", tuning=cfg, inits=1, shard=0, n_shards=1, device="cpu", dtype="fp32")
    assert "ignoring unreadable checkpoint" in caplog.text
    assert read_arrow(out).num_rows > 0 and not out.with_name(f".{out.name}.ckpt").exists()


class Stop(Exception):
    pass


def test_a_checkpoint_of_other_settings_or_targets_is_ignored(tiny_llama, tmp_path, caplog):
    from distreach.engine import TuneConfig, tune

    g = np.random.default_rng(0)
    p = g.dirichlet(np.ones(tiny_llama.vocab_size), 5)
    cfg = TuneConfig(max_steps=30, patience=30, batch_size=3)
    ckpt = tmp_path / "c.ckpt"

    def stop(step, active):
        if step == 10:
            raise Stop

    with pytest.raises(Stop):  # a real mid-batch checkpoint of these inputs
        tune(tiny_llama, p, list(range(5)), cfg, on_step=stop, checkpoint=ckpt, checkpoint_seconds=0)
    saved = ckpt.read_bytes()
    caplog.set_level("INFO")
    other_weights = dataclasses.replace(tiny_llama, manifest={**tiny_llama.manifest, "weights_sha256": "0" * 64})
    seeds = list(range(5))
    for model, other_p, other_seeds, other_cfg in (
        (tiny_llama, p, seeds, TuneConfig(max_steps=30, patience=30, batch_size=3, lr=0.2)),  # other settings
        (tiny_llama, p[::-1].copy(), seeds, cfg),  # other targets
        (tiny_llama, p, [5, 6, 7, 8, 9], cfg),  # other init seeds
        (other_weights, p, seeds, cfg),  # other weights (by their recorded hash)
    ):
        ckpt.write_bytes(saved)
        caplog.clear()
        got = tune(model, other_p, other_seeds, other_cfg, checkpoint=ckpt)
        assert "made from other inputs or settings" in caplog.text and "resuming" not in caplog.text
        fresh = tune(model, other_p, other_seeds, other_cfg)
        np.testing.assert_array_equal(got.kl_min, fresh.kl_min)
        np.testing.assert_array_equal(got.steps, fresh.steps)
    ckpt.write_bytes(saved)  # the same inputs do resume from it
    caplog.clear()
    assert tune(tiny_llama, p, list(range(5)), cfg, checkpoint=ckpt).work["resumed_from"] == {"row": 0, "step": 10}
    assert "resuming from" in caplog.text


def test_a_resumed_call_runs_only_the_steps_left_and_ends_as_a_fresh_one(tiny_llama, tmp_path, caplog):
    """Stopped in its second batch, a call resumes from the checkpointed step of that batch: the
    finished batch is not tuned again, nor the steps the current one had done."""
    from distreach.engine import TuneConfig, tune

    p = np.random.default_rng(1).dirichlet(np.ones(tiny_llama.vocab_size), 5)
    cfg = TuneConfig(max_steps=16, patience=6, min_delta=1e-3, lr=0.3, batch_size=3)
    fresh = tune(tiny_llama, p, list(range(5)), cfg)
    assert fresh.work == {"row_steps": int(fresh.steps.sum()), "resumed_from": None, "batch_rows": [3, 2]}
    assert fresh.early_stopped[3:].any() and not fresh.early_stopped[3:].all()  # rows stop early and at max_steps
    ckpt = tmp_path / "c.ckpt"
    batches = []

    def stop(step, active):
        batches.extend([step] if step == 0 else [])
        if len(batches) == 2 and step == 6:  # step 6 of rows 3..4
            raise Stop

    with pytest.raises(Stop):
        tune(tiny_llama, p, list(range(5)), cfg, on_step=stop, checkpoint=ckpt, checkpoint_seconds=0)
    state = torch.load(ckpt, weights_only=True)
    assert (state["lo"], state["step"]) == (3, 5)  # the last step saved before the stop
    saved = checkpointed_row_steps(state)
    caplog.set_level("INFO")
    resumed = tune(tiny_llama, p, list(range(5)), cfg, checkpoint=ckpt)
    assert resumed.work == {"row_steps": fresh.work["row_steps"] - saved, "resumed_from": {"row": 3, "step": 6},
                            "batch_rows": [3, 2]}
    assert 0 < resumed.work["row_steps"] < fresh.work["row_steps"] - int(fresh.steps[:3].sum())
    assert "3 of 5 rows done, the batch from row 3 at step 6" in caplog.text
    for name in ("kl_min", "q_entropy", "best_step", "steps", "early_stopped", "best_soft", "init_ids"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(fresh, name), err_msg=name)



def test_a_batch_resumed_after_one_of_its_rows_stopped_scores_the_others_against_their_own_targets(tiny_llama, tmp_path):
    """A checkpoint taken after a row of the batch stopped holds fewer active rows than the batch:
    the resumed rows are scored against their own targets (not the batch's first ones) and end as
    in an uninterrupted call."""
    from distreach.engine import TuneConfig, tune

    p = np.random.default_rng(0).dirichlet(np.full(tiny_llama.vocab_size, 0.3), 3)
    cfg = TuneConfig(max_steps=16, patience=3, min_delta=1e-3, lr=0.3, batch_size=3)
    fresh = tune(tiny_llama, p, [0, 1, 2], cfg)
    first = int(fresh.steps.min())
    assert fresh.steps.argmin() == 1 and first < int(fresh.steps.max())  # the middle row stops first
    ckpt = tmp_path / "c.ckpt"

    def stop(step, active):
        if step == first + 1:
            raise Stop

    with pytest.raises(Stop):
        tune(tiny_llama, p, [0, 1, 2], cfg, on_step=stop, checkpoint=ckpt, checkpoint_seconds=0)
    assert len(torch.load(ckpt, weights_only=True)["batch"]["active"]) < 3
    resumed = tune(tiny_llama, p, [0, 1, 2], cfg, checkpoint=ckpt)
    assert resumed.work["resumed_from"] == {"row": 0, "step": first + 1}
    for name in ("kl_min", "q_entropy", "best_step", "steps", "best_soft"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(fresh, name), err_msg=name)


def poison(monkeypatch, when, row=0):
    """Make the model's logits NaN for row ``row`` (the first by default) in its first forward pass when
    ``when(dtype)``."""
    real = tuning.load_materialised

    def load(folder, dtype="fp32", device="auto", with_model=True):
        loaded, tok = real(folder, dtype=dtype, device=device, with_model=with_model)
        if when(dtype):
            calls = []

            def hook(module, args, output):
                calls.append(1)
                if len(calls) > 1:
                    return output
                output = output.clone()
                output[row] = float("nan")
                return output

            loaded.model.get_output_embeddings().register_forward_hook(hook)
        return loaded, tok

    monkeypatch.setattr(tuning, "load_materialised", load)
    # no CPU memory check: its probe's forward passes would take the poisoned one
    monkeypatch.setattr(memory, "free_bytes", lambda *args: None)


@pytest.mark.parametrize("fp32_too", [False, True])
def test_non_finite_rows_are_retried_in_fp32_or_marked_failed(tiny_dirs, tmp_path, monkeypatch, fp32_too):
    poison(monkeypatch, (lambda d: True) if fp32_too else (lambda d: d == "bf16"))
    targets = targets_file(tmp_path)
    out = tmp_path / "s.arrow"
    table = run_shard(model_dir=str(tiny_dirs["llama"]), targets_path=str(targets), out_path=str(out), experiment="e",
                      method="soft", tuning=tuning_config({"max_steps": 5, "batch_size": 4}), inits=1, shard=0,
                      n_shards=1, device="cpu", dtype="bf16")
    status, dtype, retry = (table.column(c).to_pylist() for c in ("status", "dtype", "retry"))
    kl = np.asarray(table.column("kl_min").to_pylist(), dtype=float)
    hit = [i for i, r in enumerate(retry) if r is not None]
    assert hit == [0] and retry[0] == "non-finite KL at step 0 in bf16"
    assert all(dtype[i] == "fp32" for i in hit) and all(d == "bf16" for i, d in enumerate(dtype) if i not in hit)
    if fp32_too:
        assert all(status[i].startswith("failed: non-finite KL") and "in fp32 too" in status[i] for i in hit)
        assert np.isnan(kl[hit]).all()
    else:
        assert all(s == "ok" for s in status) and np.isfinite(kl).all()
    ok = [i for i in range(len(status)) if i not in hit]
    assert np.isfinite(kl[ok]).all()
    # the provenance names the attention each dtype's rows ran with (bf16 on a CPU: eager; fp32: SDPA)
    assert arrow_metadata(read_arrow(out))["attention"] == {"bf16": "eager", "fp32": "sdpa"}


@pytest.mark.parametrize("row", [0, -1])
def test_each_shard_names_the_attention_of_the_dtypes_its_own_rows_ran_in(tiny_dirs, tmp_path, monkeypatch, row):
    """Two experiments tuned in one bf16 job (a soft and a hard one: one batch); the first row (the
    first experiment's) or the last (the second's) is retried in fp32. Both tables record the work of
    the whole call, its retry included."""
    poison(monkeypatch, lambda d: d == "bf16", row)
    targets = targets_file(tmp_path)
    outs = [tmp_path / "a.arrow", tmp_path / "b.arrow"]
    tables = tuning.run_job(
        model_dir=str(tiny_dirs["llama"]), checkpoint=tmp_path / "ck", dtype="bf16", device="cpu",
        shards=[{"experiment": e, "targets": targets, "out": o, "inits": 1, "method": m,
                 "tuning": tuning_config({"max_steps": 3, "method": m})} for e, o, m in zip("ab", outs, ("soft", "hard"))])
    a, b = (read_arrow(o) for o in outs)
    retried, other = (a, b) if row == 0 else (b, a)
    assert retried.column("dtype").to_pylist()[row] == "fp32" and set(other.column("dtype").to_pylist()) == {"bf16"}
    assert arrow_metadata(retried)["attention"] == {"bf16": "eager", "fp32": "sdpa"}
    assert arrow_metadata(other)["attention"] == {"bf16": "eager"}
    work = [arrow_metadata(t)["work"] for t in tables]
    steps = sum(t.column("steps").to_numpy().sum() for t in tables)
    assert work[0] == work[1] and work[0]["row_steps"] == steps + 1  # every row's steps, and the retried row's bf16 one
    assert work[0]["batch_rows"] == [a.num_rows + b.num_rows, 1]  # the job's one batch, then the retry's


@pytest.mark.parametrize("method, extra", [("hard", {}), ("gcg", {"gcg_width": 4, "readable": False}),
                                           ("gcg", {"gcg_width": 4, "readable": True})])
def test_a_tuning_resolves_bos_and_allowed_tokens_once_fp32_retry_included(tiny_dirs, tiny_llama, tmp_path, monkeypatch,
                                                                           method, extra):
    """One tuning context per tuning: the BOS token and the allowed tokens are resolved once for the
    tuning, the fp32 retry of a non-finite row and the result table (BOS column, round-trip KL); only
    the BOS keys and values are computed again, on the fp32 weights. The retried row's prompt typed
    back in runs on the fp32 model it was tuned on."""
    from distreach import engine, tokens
    from distreach.targets import read_target_matrix
    from distreach.units import to_unit

    poison(monkeypatch, lambda d: d == "bf16")
    calls = {"resolve_bos": 0, "allowed_tokens": 0, "usable_mask": 0, "_bos_cache": 0}

    def counting(name, real):
        def counted(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return counted

    for name, real in (("resolve_bos", tokens.resolve_bos), ("allowed_tokens", engine.allowed_tokens),
                       ("usable_mask", tokens.usable_mask), ("_bos_cache", engine._bos_cache)):
        for module in [m for n, m in sys.modules.items() if n.startswith("distreach")]:
            if getattr(module, name, None) is real:  # the function wherever it is imported
                monkeypatch.setattr(module, name, counting(name, real))
    targets = targets_file(tmp_path)
    table = run_shard(model_dir=str(tiny_dirs["llama"]), targets_path=str(targets),
                      out_path=str(tmp_path / "s.arrow"), experiment="e", method=method,
                      tuning=tuning_config({"method": method, "prefix_len": 3, "max_steps": 5, "batch_size": 4, **extra}),
                      inits=1, shard=0, n_shards=1, device="cpu", dtype="bf16")
    assert table.column("retry").to_pylist()[0] == "non-finite KL at step 0 in bf16"  # the fp32 retry ran
    work = arrow_metadata(table)["work"]
    assert work["batch_rows"] == [4] * (table.num_rows // 4) + [table.num_rows % 4] * bool(table.num_rows % 4) + [1]
    if method == "gcg" and not extra["readable"]:  # every candidate scored: 4 moves of 4 per row, the retried row's in fp32
        assert set(table.column("steps").to_pylist()) == {5} and work["candidates"] == 4 * 4 * table.num_rows
    assert set(table.column("bos_token_id").to_pylist()) == {1}
    assert calls == {"resolve_bos": 1, "allowed_tokens": 1, "usable_mask": 1, "_bos_cache": 2}
    monkeypatch.undo()
    row = table.slice(0, 1).to_pylist()[0]
    meta, probs = read_target_matrix(targets, tiny_llama.vocab_size)
    p = probs[meta.column("target_id").to_pylist().index(row["target_id"])]
    fp32 = engine.prompt_kl(tiny_llama, p[None], [row["prompt_ids"]])[0]  # tiny_llama: the same folder in fp32
    assert row["dtype"] == "fp32" and row["status"] == "ok" and np.isfinite(row["kl_roundtrip"])
    assert row["kl_roundtrip"] == pytest.approx(float(to_unit(fp32, row["entropy_unit"])), rel=1e-6)


def test_a_checkpoint_of_another_attention_implementation_is_not_resumed(tiny_llama):
    """Eager attention and SDPA round differently: the checkpoint key names the one the model runs."""
    from distreach.checkpoint import checkpoint_key
    from distreach.engine import TuneConfig

    def key():
        return checkpoint_key(tiny_llama, torch.zeros(1, tiny_llama.vocab_size), [0], TuneConfig(), False)

    before = key()
    assert tiny_llama.model.config._attn_implementation == "sdpa"
    tiny_llama.model.set_attn_implementation("eager")
    try:
        assert key() != before
    finally:
        tiny_llama.model.set_attn_implementation("sdpa")
    assert key() == before
