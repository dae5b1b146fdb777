"""What each result row keeps: its best prompt (fed back to the model it gives the row's kl_min,
and perturbed it does not) and the top tokens of its target and of q at the best step."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from distreach.prompts import Prompt, next_token_logprobs, prompt_kl
from distreach.settings import tuning_config
from distreach.tuning import tune_rows
from distreach.targets import target_probs
from distreach.vanilla import EntropyGrid, VanillaSettings, vanilla_targets

# |recomputed - kl_min| in fp32: one forward of the whole prompt against the engine's batched forward
# with the BOS keys and values computed once differ by float rounding only, a few ulps (float32 eps
# 1.2e-7) of each log q; measured at most 6e-7 bits here
RTOL, ATOL = 100 * float(np.finfo(np.float32).eps), 2e-6

METHODS = {
    "soft": {"method": "soft"},
    "hybrid": {"method": "hybrid", "n_soft": 2},
    "hybrid-scattered": {"method": "hybrid", "soft_positions": [1, 3]},
    "hard": {"method": "hard"},
    "gcg": {"method": "gcg", "gcg_width": 8, "gcg_topk": 16},
}


@pytest.fixture(scope="module")
def targets():
    table = vanilla_targets(93, EntropyGrid(step=2.0, unit="bits"), VanillaSettings(per_level=1))
    return target_probs(table, 93)


@pytest.fixture(scope="module", params=list(METHODS))
def result(request, tiny_llama, targets):
    meta, probs = targets
    cfg = tuning_config({"max_steps": 25, "patience": 5, **METHODS[request.param]})
    table = tune_rows(tiny_llama, meta, probs, experiment="e", method=cfg.method, tuning=cfg, inits=2)
    return request.param, pl.from_arrow(table)


@pytest.mark.parametrize("method", ["soft", "hybrid"])
def test_the_kept_prompt_is_the_best_steps_not_the_last(tiny_llama, targets, method):
    """A step size so large that KL rises after the first steps: rows stop by patience well after
    their best step, and the kept prompt still gives kl_min."""
    meta, probs = targets
    cfg = tuning_config({"max_steps": 25, "patience": 4, "lr": 300.0, **METHODS[method]})
    df = pl.from_arrow(tune_rows(tiny_llama, meta, probs, experiment="e", method=cfg.method, tuning=cfg, inits=1))
    assert (df["best_step"] < df["steps"] - 2).all()
    for row in df.iter_rows(named=True):
        kl = prompt_kl(tiny_llama, Prompt.from_row(row), target_of(row, targets)) / np.log(2)
        assert kl == pytest.approx(row["kl_min"], rel=RTOL, abs=ATOL), row["target_id"]


def target_of(row, targets):
    meta, probs = targets
    return probs[meta.column("target_id").to_pylist().index(row["target_id"])]


def test_the_kept_prompt_gives_the_rows_kl_min_and_a_perturbed_one_does_not(tiny_llama, targets, result):
    method, df = result
    bits = np.log(2)
    for row in df.iter_rows(named=True):
        prompt = Prompt.from_row(row)
        assert len(prompt.soft_positions) == row["n_soft"] and len(prompt.hard_ids) == row["prefix_len"] - row["n_soft"]
        p = target_of(row, targets)
        assert prompt_kl(tiny_llama, prompt, p) / bits == pytest.approx(row["kl_min"], rel=RTOL, abs=ATOL), row["target_id"]
        if method in ("hard", "gcg"):
            assert row["soft_prompt"] == [] and row["soft_positions"] == []
            continue
        rng = np.random.default_rng(0)
        flat = np.asarray(row["soft_prompt"], dtype=np.float32)
        bumped = (flat + rng.normal(0, 0.1 * flat.std(), flat.size)).astype(np.float32)
        other = Prompt.from_row({**row, "soft_prompt": bumped})
        moved = prompt_kl(tiny_llama, other, p) / bits
        # the check above tells the kept prompt from one moved by a tenth of its spread
        assert moved != pytest.approx(row["kl_min"], rel=RTOL, abs=ATOL), (row["target_id"], moved, row["kl_min"])


def test_top_tokens_are_the_targets_and_qs_at_the_best_step(tiny_llama, targets, result):
    _, df = result
    for row in df.iter_rows(named=True):
        p = target_of(row, targets)
        ids = np.asarray(row["p_top_ids"])
        # the 20 most probable target tokens (ties by id), those with p > 0, and their probabilities
        order = np.lexsort((np.arange(p.size), -p))[:20]
        assert ids.tolist() == [i for i in order.tolist() if p[i] > 0]
        np.testing.assert_array_equal(row["p_top_probs"], p[ids])
        # q at the best step is what the kept prompt gives: its top 20 and its mass on the target's tokens
        q = next_token_logprobs(tiny_llama, Prompt.from_row(row)).exp().numpy()
        np.testing.assert_allclose(row["q_top_probs"], np.sort(q)[::-1][:20], rtol=1e-4)
        np.testing.assert_allclose(q[row["q_top_ids"]], row["q_top_probs"], rtol=1e-4)
        np.testing.assert_allclose(row["q_on_p_top"], q[ids], rtol=1e-4)


def test_top_k_is_a_tuning_setting(tiny_llama, targets):
    meta, probs = targets
    for k in (3, 0):
        cfg = tuning_config({"max_steps": 3, "top_k": k})
        df = pl.from_arrow(tune_rows(tiny_llama, meta, probs, experiment="e", method="soft", tuning=cfg, inits=1))
        assert set(df["q_top_ids"].list.len()) == {k} and set(df["p_top_ids"].list.len()) == {k}
        assert set(df["q_on_p_top"].list.len()) == {k} and set(df["q_top_probs"].list.len()) == {k}


def test_a_zero_probability_target_token_is_not_listed(tiny_llama):
    probs = np.zeros((1, 93), np.float32)
    probs[0, [10, 20]] = [0.75, 0.25]
    table = vanilla_targets(93, EntropyGrid(step=8.0, stop=0.0, unit="bits", include_max=False), VanillaSettings(per_level=1))
    meta, _ = target_probs(table, 93)
    df = pl.from_arrow(tune_rows(tiny_llama, meta, probs, experiment="e", method="soft",
                                 tuning=tuning_config({"max_steps": 3}), inits=1))
    assert df["p_top_ids"][0].to_list() == [10, 20] and df["p_top_probs"][0].to_list() == [0.75, 0.25]
    assert df["q_on_p_top"][0].len() == 2


def test_a_prompt_that_does_not_add_up_is_refused():
    from distreach.errors import DistreachError

    row = {"target_id": "t", "init_index": 0, "prefix_len": 3, "soft_positions": [0, 1], "soft_prompt": [0.0] * 5,
           "prompt_ids": [7], "bos_token_id": None}
    with pytest.raises(DistreachError, match="row 't' \\(init 0\\): 2 soft positions with 5 values"):
        Prompt.from_row(row)
    with pytest.raises(DistreachError, match="no soft_prompt column"):
        Prompt.from_row({k: v for k, v in row.items() if k != "soft_prompt"})


def test_input_embeddings_are_bos_prompt_then_text(tiny_llama):
    """The inputs fed back are the engine's: the BOS token's embedding, soft vectors and hard
    token embeddings in prompt order, then the text's token embeddings."""
    from distreach.prompts import input_embeddings

    embed = tiny_llama.model.get_input_embeddings()
    soft = np.arange(2 * 32, dtype=np.float32).reshape(2, 32) / 100
    prompt = Prompt(prefix_len=3, soft_positions=(0, 2), soft=soft, hard_ids=(9,), bos_id=1)
    x = input_embeddings(tiny_llama, prompt, [4, 5])[0]
    with torch.no_grad():
        want = torch.cat([embed(torch.tensor([1])), torch.from_numpy(soft[:1]), embed(torch.tensor([9])),
                          torch.from_numpy(soft[1:]), embed(torch.tensor([4, 5]))])
    torch.testing.assert_close(x, want)


def test_samples_come_from_the_kept_prompt(tiny_llama, result):
    """First tokens sampled after the kept prompt follow q after that prompt (total variation
    within sampling noise), which is far from q after the BOS token alone. The tiny model's head is
    sharpened (its weights x 40, untied) so that q depends on the prompt."""
    import copy

    from distreach.prompts import sample

    method, df = result
    row = df.sort("kl_min").row(0, named=True)
    prompt = Prompt.from_row(row)
    sharp = copy.copy(tiny_llama)
    sharp.model = copy.deepcopy(tiny_llama.model)
    sharp.model.lm_head.weight = torch.nn.Parameter(40 * tiny_llama.model.lm_head.weight.detach().clone(), requires_grad=False)
    q = next_token_logprobs(sharp, prompt).exp().numpy()
    alone = next_token_logprobs(sharp, None, bos_id=row["bos_token_id"]).exp().numpy()
    n = 4000
    first = [seq[0] for seq in sample(sharp, prompt, samples=n, max_new_tokens=1, seed=3)]
    freq = np.bincount(first, minlength=q.size)[: q.size] / n
    # sampling noise of the total variation: at most about sqrt(|V| / (2 pi n)) = 0.06 at |V| = 93, n = 4000
    assert 0.5 * np.abs(freq - q).sum() < 0.08
    assert 0.5 * np.abs(q - alone).sum() > 0.3, method  # the check above tells the two apart
