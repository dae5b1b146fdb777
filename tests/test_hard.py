"""Hard and hybrid prompts: the same engine with a mask over positions."""

import numpy as np
import pytest
import torch

from distreach.engine import TuneConfig, _Batch, allowed_tokens, init_rows, tune, tuning_context
from distreach.errors import DistreachError
from distreach.infotheory import kl

from .test_engine import targets


def test_hard_update_is_the_true_argmin_of_the_linear_scores(tiny_llama):
    """After one step, hard position 0 holds argmin_x (e(x) - theta_0) . grad_0, found by brute force."""
    lm = tiny_llama
    cfg = TuneConfig(method="hard", prefix_len=3, bos="bos")
    p = torch.tensor(targets(lm.vocab_size, 2, seed=1))
    embed = lm.model.get_input_embeddings()
    ctx = tuning_context(lm, cfg)
    allowed = ctx.allowed
    soft, ids, _ = init_rows(embed, embed.weight, allowed, [5, 6], cfg)
    bos = embed(torch.tensor([[lm.tokenizer.bos_token_id]]))
    batch = _Batch(ctx, p, soft, ids, cfg, record_curve=False)
    batch.step(0)
    for r in range(2):
        e = embed(ids[r : r + 1]).detach().requires_grad_(True)
        logits = lm.model(inputs_embeds=torch.cat([bos, e], 1)).logits[:, -1]
        kl(p[r : r + 1], torch.log_softmax(logits, -1)).sum().backward()
        g, theta = e.grad[0, 0], e.detach()[0, 0]
        scores = [float((embed.weight[x] - theta) @ g) if allowed[x] else np.inf for x in range(embed.weight.shape[0])]
        assert int(batch.ids[r, 0]) == int(np.argmin(scores))
        assert torch.equal(batch.ids[r, 1:], ids[r, 1:])  # other positions wait their turn


def test_special_tokens_are_never_used(tiny_llama):
    res = tune(tiny_llama, targets(tiny_llama.vocab_size, 3), [0, 1, 2], TuneConfig(method="hard", max_steps=30))
    special = set(tiny_llama.tokenizer.all_special_ids)
    assert not special & set(res.best_ids.flatten().tolist())


def test_candidate_mode_never_increases_the_loss(tiny_llama):
    cfg = TuneConfig(method="hard", candidates=8, max_steps=40, patience=40)
    res = tune(tiny_llama, targets(tiny_llama.vocab_size, 4, seed=2), [0, 1, 2, 3], cfg, record_curve=True)
    for row in res.curve:
        seen = row[~np.isnan(row)]
        assert len(seen) >= 2
        assert np.all(np.diff(seen) <= 1e-6), seen
    # ... and swaps tokens that lower it: every row ends below where it started
    assert (res.kl_min < 0.99 * res.curve[:, 0]).all(), (res.kl_min, res.curve[:, 0])


def test_paper_mode_records_the_minimum_of_a_curve_that_may_rise(tiny_llama):
    cfg = TuneConfig(method="hard", max_steps=300, patience=20)
    res = tune(tiny_llama, targets(tiny_llama.vocab_size, 4, seed=3), [0, 1, 2, 3], cfg, record_curve=True)
    np.testing.assert_allclose(res.kl_min, np.nanmin(res.curve, axis=1), rtol=1e-6)
    assert any(np.any(np.diff(row[~np.isnan(row)]) > 0) for row in res.curve)  # the argmin can overshoot
    assert res.early_stopped.all() and (res.steps < 300).all()


@pytest.mark.parametrize("method,n_soft", [("soft", 4), ("hard", 0)])
def test_hybrid_at_the_ends_equals_soft_and_hard(tiny_llama, method, n_soft):
    p = targets(tiny_llama.vocab_size, 3, seed=4)
    base = dict(prefix_len=4, max_steps=25, patience=5, candidates=1)
    pure = tune(tiny_llama, p, [7, 8, 9], TuneConfig(method=method, **base))
    hybrid = tune(tiny_llama, p, [7, 8, 9], TuneConfig(method="hybrid", n_soft=n_soft, **base))
    np.testing.assert_allclose(hybrid.kl_min, pure.kl_min, rtol=1e-6)
    assert (hybrid.steps == pure.steps).all()
    assert (hybrid.best_ids == pure.best_ids).all()


def test_hybrid_batched_equals_separate(tiny_llama):
    p = targets(tiny_llama.vocab_size, 4, seed=5)
    cfg = TuneConfig(method="hybrid", prefix_len=4, soft_positions=(1, 3), candidates=4, max_steps=30, patience=6)
    together = tune(tiny_llama, p, [1, 2, 3, 4], cfg)
    for i in range(4):
        alone = tune(tiny_llama, p[i : i + 1], [i + 1], cfg)
        assert alone.steps[0] == together.steps[i]
        np.testing.assert_allclose(alone.kl_min[0], together.kl_min[i], rtol=1e-5)
        assert (alone.best_ids[0] == together.best_ids[i]).all()


def test_mask_options_are_checked():
    assert TuneConfig(method="hybrid", prefix_len=5).soft_mask == (True, True, False, False, False)
    assert TuneConfig(method="hybrid", prefix_len=4, soft_positions=[3, 0]).soft_mask == (True, False, False, True)
    assert TuneConfig(method="hard").n_soft_positions == 0
    with pytest.raises(DistreachError, match="tuning.soft_positions"):
        TuneConfig(method="hybrid", prefix_len=3, soft_positions=(0, 3))
    with pytest.raises(DistreachError, match="tuning.n_soft"):
        TuneConfig(method="hybrid", prefix_len=3, n_soft=4)
    with pytest.raises(DistreachError, match="a soft prompt has 5 soft positions"):
        TuneConfig(method="soft", n_soft=2)
    with pytest.raises(DistreachError, match="tuning.candidates"):
        TuneConfig(method="hard", candidates=0)


def test_recorded_init_ids_are_the_tokens_each_row_starts_from(tiny_llama):
    """A hybrid row's soft positions start at the embeddings of its recorded init tokens and its
    hard positions at the tokens themselves; tune() records exactly those."""
    lm = tiny_llama
    cfg = TuneConfig(method="hybrid", prefix_len=4, n_soft=2, max_steps=1)
    embed = lm.model.get_input_embeddings()
    allowed = allowed_tokens(lm.tokenizer, embed.weight.shape[0], cfg)
    soft, hard, drawn = init_rows(embed, embed.weight, allowed, [3, 4, 5], cfg)
    mask = torch.tensor(cfg.soft_mask)
    assert torch.equal(embed(drawn[:, mask]).detach(), soft)
    assert torch.equal(drawn[:, ~mask], hard)
    res = tune(lm, targets(lm.vocab_size, 3), [3, 4, 5], cfg)
    assert res.init_ids.tolist() == drawn.tolist()
    assert len(set(map(tuple, res.init_ids.tolist()))) == 3
