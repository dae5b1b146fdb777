"""Hard and hybrid prompts: the same engine with a mask over positions."""

import numpy as np
import pytest
import torch

from distreach.engine import STOP_REASONS, TuneConfig, _Batch, allowed_tokens, init_rows, tune, tuning_context
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
    soft, ids = init_rows(embed, embed.weight, allowed, [5, 6], cfg)
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
    """Neither drawn as init tokens nor swapped in; with exclude_special off, the same rows use them."""
    p, seeds = targets(tiny_llama.vocab_size, 40), list(range(40))
    special = set(tiny_llama.tokenizer.all_special_ids)
    for exclude in (True, False):
        res = tune(tiny_llama, p, seeds, TuneConfig(method="hard", max_steps=30, exclude_special=exclude))
        used = set(res.best_ids.flatten().tolist()) | set(res.init_ids.flatten().tolist())
        assert bool(special & used) is not exclude, (exclude, special & used)


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
    hard positions at the tokens themselves (init_rows gives every position both); tune()
    records exactly those tokens."""
    lm = tiny_llama
    cfg = TuneConfig(method="hybrid", prefix_len=4, n_soft=2, max_steps=1)
    embed = lm.model.get_input_embeddings()
    allowed = allowed_tokens(lm.tokenizer, embed.weight.shape[0], cfg)
    soft, drawn = init_rows(embed, embed.weight, allowed, [3, 4, 5], cfg)
    assert torch.equal(embed(drawn).detach(), soft)
    res = tune(lm, targets(lm.vocab_size, 3), [3, 4, 5], cfg)
    assert res.init_ids.tolist() == drawn.tolist()
    assert len(set(map(tuple, res.init_ids.tolist()))) == 3


GROUPS = [dict(method="soft"), dict(method="hybrid", n_soft=1), dict(method="hybrid", soft_positions=(1, 3)),
          dict(method="hard")]


@pytest.mark.parametrize("candidates", [1, 4])
def test_rows_of_soft_hybrid_and_hard_settings_tuned_together_equal_separate_runs(tiny_llama, candidates):
    """tune_groups tunes soft, hybrid and hard rows of one prefix length in the same batches: each
    group's rows end as in a call of their own (each row its own soft positions, its own hard
    positions in turn, its own convergence), with that group's prompt shapes."""
    from distreach.engine import tune_groups

    p = targets(tiny_llama.vocab_size, 8, seed=6)
    base = dict(prefix_len=4, max_steps=30, patience=6, candidates=candidates)
    groups = [(p[2 * i: 2 * i + 2], [2 * i, 2 * i + 1], TuneConfig(**g, **base)) for i, g in enumerate(GROUPS)]
    groups.append((p[:0], [], TuneConfig(method="hard", **base)))  # a group with no rows
    together = tune_groups(tiny_llama, groups, record_curve=True)
    assert len(together) == 5 and len(together[-1]) == 0 and together[-1].best_ids.shape == (0, 4)
    assert together[0].work["row_steps"] == sum(int(r.steps.sum()) for r in together)
    for (probs, seeds, cfg), got in zip(groups[:4], together):
        alone = tune(tiny_llama, probs, seeds, cfg, record_curve=True)
        assert got.best_soft.shape == alone.best_soft.shape == (2, cfg.n_soft_positions, 32), cfg
        assert got.best_ids.shape == alone.best_ids.shape == (2, 4 - cfg.n_soft_positions), cfg
        for name in ("steps", "best_step", "stop_reason", "best_ids", "init_ids", "p_top_ids"):
            np.testing.assert_array_equal(getattr(got, name), getattr(alone, name), err_msg=f"{cfg.method} {name}")
        np.testing.assert_allclose(got.kl_min, alone.kl_min, rtol=1e-5)
        np.testing.assert_allclose(got.curve, alone.curve, rtol=1e-4)
        np.testing.assert_allclose(got.best_soft, alone.best_soft, rtol=1e-4, atol=1e-6)
    if candidates > 1:  # the pure hard rows converge (a sweep that changes nothing) while the others tune on
        assert [STOP_REASONS[i] for i in together[3].stop_reason] == ["converged"] * 2


def test_rows_of_settings_other_than_their_soft_positions_are_not_tuned_together(tiny_llama):
    from distreach.engine import tune_groups

    p = targets(tiny_llama.vocab_size, 2)
    for other, why in ((dict(method="soft", lr=0.5), "they differ in lr"),
                       (dict(method="soft", prefix_len=3), "they differ in prefix_len"),
                       (dict(method="gcg", gcg_width=4), "method gcg is not one of")):
        with pytest.raises(DistreachError, match=why):
            tune_groups(tiny_llama, [(p[:1], [0], TuneConfig(method="hard")), (p[1:], [1], TuneConfig(**other))])
    with pytest.raises(DistreachError, match="method gcg is not one of"):  # gcg has its own engine: tune()
        tune_groups(tiny_llama, [(p, [0, 1], TuneConfig(method="gcg", gcg_width=4))])


def test_a_batch_of_hard_prompts_carries_no_soft_vectors(tiny_llama, tmp_path):
    """Rows without soft positions tune without soft state: the checkpointed batch holds none."""
    from distreach.engine import tune_groups

    class Stop(Exception):
        pass

    def stop(step, active):
        if step == 2:
            raise Stop

    p = targets(tiny_llama.vocab_size, 2)
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(Stop):
        tune_groups(tiny_llama, [(p, [0, 1], TuneConfig(method="hard", max_steps=5))], on_step=stop, checkpoint=ckpt,
                    checkpoint_seconds=0)
    state = torch.load(ckpt, weights_only=True)["batch"]
    assert state["theta"].numel() == 0 and state["rec"]["best_soft"].numel() == 0
    assert state["rec"]["best_ids"].shape == (2, 5)


def test_a_mixed_call_resumed_from_its_checkpoint_ends_as_a_fresh_one(tiny_llama, tmp_path):
    from distreach.engine import tune_groups

    p = targets(tiny_llama.vocab_size, 6, seed=7)
    base = dict(prefix_len=4, max_steps=20, patience=20, candidates=2)
    groups = [(p[2 * i: 2 * i + 2], [2 * i, 2 * i + 1], TuneConfig(**g, **base)) for i, g in enumerate(GROUPS[1:])]
    fresh = tune_groups(tiny_llama, groups)

    class Stop(Exception):
        pass

    def stop(step, active):
        if step == 9:
            raise Stop

    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(Stop):
        tune_groups(tiny_llama, groups, on_step=stop, checkpoint=ckpt, checkpoint_seconds=0)
    resumed = tune_groups(tiny_llama, groups, checkpoint=ckpt)
    assert resumed[0].work["resumed_from"] == {"row": 0, "step": 9}
    for a, b in zip(resumed, fresh):
        for name in ("kl_min", "q_entropy", "best_step", "steps", "early_stopped", "best_soft", "best_ids", "init_ids"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_each_row_of_a_mixed_batch_swaps_its_own_hard_positions_in_turn(tiny_llama):
    """In one batch of rows with different soft positions, step s changes at most the token at a
    row's hard position s mod n_hard (its hard positions left to right), and over a sweep each hard
    position is visited; soft positions' tokens never change."""
    lm = tiny_llama
    masks = [(True, False, True, False), (False, False, False, True), (False,) * 4]
    cfg = TuneConfig(method="hybrid", prefix_len=4, n_soft=0, max_steps=12, patience=12)
    ctx = tuning_context(lm, cfg)
    embed = lm.model.get_input_embeddings()
    soft, ids = init_rows(embed, embed.weight, ctx.allowed, [11, 12, 13], cfg)
    batch = _Batch(ctx, torch.tensor(targets(lm.vocab_size, 3, seed=8)), soft, ids, cfg, record_curve=False,
                   mask=torch.tensor(masks))
    changed = [set() for _ in masks]
    for step in range(8):
        before = batch.ids.clone()
        batch.step(step)
        for r, mask in enumerate(masks):
            hard = [i for i, s in enumerate(mask) if not s]
            moved = set((batch.ids[r] != before[r]).nonzero().flatten().tolist())
            assert moved <= {hard[step % len(hard)]}, (r, step, moved)
            changed[r] |= moved
    assert changed == [{1, 3}, {0, 1, 2}, {0, 1, 2, 3}]


def test_only_rows_without_soft_positions_converge(tiny_llama):
    """A sweep that changes no hard token stops a pure hard row (converged), never a row with soft
    positions, which tunes on beside it."""
    from distreach.engine import tune_groups

    p = targets(tiny_llama.vocab_size, 4, seed=9)
    base = dict(prefix_len=4, max_steps=40, patience=40, candidates=4, lr=1e-4)
    hybrid, hard = tune_groups(tiny_llama, [(p[:2], [0, 1], TuneConfig(method="hybrid", n_soft=1, **base)),
                                            (p[2:], [2, 3], TuneConfig(method="hard", **base))])
    assert [STOP_REASONS[i] for i in hard.stop_reason] == ["converged"] * 2 and (hard.steps < 40).all()
    assert [STOP_REASONS[i] for i in hybrid.stop_reason] == ["step cap"] * 2
