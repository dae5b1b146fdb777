import numpy as np
import pytest
import torch
from scipy import stats

from distreach.engine import STOP_REASONS, TuneConfig, is_gain, tune
from distreach.errors import DistreachError


def targets(v, n, seed=0, temp=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, v, generator=g) * temp, -1).numpy()


CFG = TuneConfig(max_steps=150, patience=5, lr=0.5)


def test_batched_equals_separate(tiny_llama):
    p = targets(tiny_llama.vocab_size, 6, temp=3.0)
    seeds = [11, 12, 13, 14, 15, 16]
    together = tune(tiny_llama, p, seeds, CFG)
    assert len(set(together.steps.tolist())) > 1, "rows should stop at different steps"
    for i in range(6):
        alone = tune(tiny_llama, p[i : i + 1], seeds[i : i + 1], CFG)
        assert alone.steps[0] == together.steps[i]
        assert alone.best_step[0] == together.best_step[i]
        np.testing.assert_allclose(alone.kl_min[0], together.kl_min[i], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(alone.q_entropy[0], together.q_entropy[i], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(alone.q_top_ids[0], together.q_top_ids[i])
        for key in ("q_top_probs", "q_on_p_top"):
            np.testing.assert_allclose(getattr(alone, key)[0], getattr(together, key)[i], rtol=1e-5, atol=1e-7)


def test_small_batches_equal_one_batch(tiny_llama):
    p = targets(tiny_llama.vocab_size, 5, seed=3)
    one = tune(tiny_llama, p, list(range(5)), CFG)
    two = tune(tiny_llama, p, list(range(5)), TuneConfig(**{**CFG.__dict__, "batch_size": 2}))
    np.testing.assert_allclose(one.kl_min, two.kl_min, rtol=1e-5)
    assert (one.steps == two.steps).all()


@pytest.mark.parametrize("bos", ["bos", "none"])
def test_kl_min_and_entropy_match_an_independent_computation(tiny_llama, bos):
    """Rebuild q from the best prefix with a full-sequence forward and check with scipy."""
    cfg = TuneConfig(max_steps=40, patience=40, bos=bos)
    p = targets(tiny_llama.vocab_size, 3, seed=5)
    res = tune(tiny_llama, p, [1, 2, 3], cfg)
    model = tiny_llama.model
    embed = model.get_input_embeddings()
    for i in range(3):
        x = torch.tensor(res.best_soft[i])[None]
        if bos == "bos":
            x = torch.cat([embed(torch.tensor([[tiny_llama.tokenizer.bos_token_id]])), x], 1)
        with torch.no_grad():
            logits = model(inputs_embeds=x).logits[0, -1].double().numpy()
        q = np.exp(logits - logits.max())
        q /= q.sum()
        assert res.kl_min[i] == pytest.approx(stats.entropy(p[i].astype(np.float64), q), rel=1e-4)
        assert res.q_entropy[i] == pytest.approx(stats.entropy(q), rel=1e-4)


def test_a_gain_lowers_the_best_kl_by_more_than_min_delta_of_it():
    assert not is_gain(0.9999, 1.0, 1e-4) and is_gain(0.99989, 1.0, 1e-4)  # the fraction min_delta of the best
    assert is_gain(5.0, float("inf"), 1e-4) and not is_gain(1.0, 1.0, 0.0)  # a first KL gains; an equal one never
    assert is_gain(torch.tensor([0.5, 1.0]), torch.tensor([1.0, 1.0]), 1e-4).tolist() == [True, False]


def test_kl_decreases_and_stopping_is_recorded(tiny_llama):
    p = targets(tiny_llama.vocab_size, 4, seed=7)
    res = tune(tiny_llama, p, [0, 1, 2, 3], TuneConfig(max_steps=100, patience=5, lr=2.0, min_delta=0))
    assert (res.steps <= 100).all() and (res.steps >= 1).all()
    assert (res.best_step < res.steps).all()
    # with min_delta 0 (the paper's rule) a row stopped by patience ran exactly `patience` steps past its best
    early = res.early_stopped
    assert early.any()
    assert (res.steps[early] == res.best_step[early] + 1 + 5).all()
    assert (res.steps[~early] == 100).all()
    reasons = np.array(STOP_REASONS)[res.stop_reason]
    assert (reasons[early] == "patience").all() and (reasons[~early] == "step cap").all()
    assert np.isfinite(res.kl_min).all() and (res.kl_min >= 0).all()
    # tuning lowers KL: every row ends well below its loss at the first step (the init's KL)
    first = tune(tiny_llama, p, [0, 1, 2, 3], TuneConfig(max_steps=1))
    assert (res.kl_min < 0.9 * first.kl_min).all(), (res.kl_min, first.kl_min)
    assert (res.best_step > 0).all()


def test_same_seed_same_numbers_and_other_seed_differs(tiny_llama):
    p = targets(tiny_llama.vocab_size, 2, seed=9)
    a = tune(tiny_llama, p, [4, 5], CFG)
    b = tune(tiny_llama, p, [4, 5], CFG)
    c = tune(tiny_llama, p, [6, 7], CFG)
    assert (a.kl_min == b.kl_min).all()
    assert (a.kl_min != c.kl_min).all()


def test_normal_init_and_gpt2(tiny_dirs):
    from distreach.models import load_materialised

    lm = load_materialised(tiny_dirs["gpt2"], device="cpu")[0]
    p = targets(lm.vocab_size, 2)
    res = tune(lm, p, [0, 1], TuneConfig(max_steps=20, init="normal", init_scale=0.5), record_curve=True)
    assert np.isfinite(res.kl_min).all()
    assert (res.kl_min < 0.9 * res.curve[:, 0]).all(), (res.kl_min, res.curve[:, 0])  # it tunes


def test_normal_init_draws_soft_positions_at_the_scaled_embedding_std(tiny_llama):
    """``init: normal`` starts soft positions at N(0, (init_scale * std of the embedding table)^2),
    not at token embeddings, and tune() starts from exactly what init_rows draws."""
    from distreach.engine import allowed_tokens, init_rows

    embed = tiny_llama.model.get_input_embeddings()
    std = embed.weight.std().item()
    seeds = list(range(200))
    for scale in (0.5, 2.0):
        cfg = TuneConfig(init="normal", init_scale=scale)
        allowed = allowed_tokens(tiny_llama.tokenizer, embed.weight.shape[0], cfg)
        soft, drawn = init_rows(embed, embed.weight, allowed, seeds, cfg)
        assert soft.std().item() == pytest.approx(scale * std, rel=0.02)  # 32,000 draws
        assert abs(soft.mean().item()) < 0.02 * scale * std
        assert not torch.isclose(soft, embed(drawn).detach()).any()
    vocab_cfg = TuneConfig()
    soft, drawn = init_rows(embed, embed.weight, allowed_tokens(tiny_llama.tokenizer, 93, vocab_cfg), seeds[:3], vocab_cfg)
    assert torch.equal(soft, embed(drawn).detach())
    # one step records the starting prefix as the best so far: the init tune() used
    cfg = TuneConfig(init="normal", init_scale=0.5, max_steps=1)
    res = tune(tiny_llama, targets(93, 3, seed=2), [4, 5, 6], cfg)
    soft, _ = init_rows(embed, embed.weight, allowed_tokens(tiny_llama.tokenizer, 93, cfg), [4, 5, 6], cfg)
    np.testing.assert_array_equal(res.best_soft, soft.numpy())


def test_exclude_untypable_keeps_tokens_out_of_hard_positions_and_inits(tiny_llama):
    """A token whose text encodes to other tokens ("ice cream": two words) is left out with
    ``exclude_untypable`` and only then."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from distreach.engine import allowed_tokens
    from distreach.models import LoadedModel

    vocab = dict(tiny_llama.tokenizer.get_vocab())
    untypable = vocab.pop("house")
    vocab["ice cream"] = untypable
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    both = allowed_tokens(tok, 93, TuneConfig())
    typable = allowed_tokens(tok, 93, TuneConfig(exclude_untypable=True))
    assert both[untypable] and not typable[untypable]
    assert torch.equal(typable | torch.nn.functional.one_hot(torch.tensor(untypable), 93).bool(), both)
    loaded = LoadedModel("stand-in", tiny_llama.model, tok)
    p = targets(93, 60, seed=8)
    for exclude in (False, True):
        cfg = TuneConfig(method="hard", exclude_untypable=exclude, max_steps=3)
        res = tune(loaded, p, list(range(60)), cfg)
        used = set(res.init_ids.flatten().tolist()) | set(res.best_ids.flatten().tolist())
        assert (untypable in used) != exclude, exclude


def test_weight_decay_is_the_decoupled_shrink_of_adamw(tiny_llama):
    """One step with weight decay wd differs from one without by lr * wd * theta (AdamW), and rows
    left in a batch after another row left it keep their decay: their next step is the one a
    batch of those rows alone takes."""
    from distreach.engine import _Batch, init_rows, tuning_context

    embed = tiny_llama.model.get_input_embeddings()
    p = torch.tensor(targets(93, 3, seed=4))

    def batch(wd, rows):
        cfg = TuneConfig(lr=0.1, weight_decay=wd)
        ctx = tuning_context(tiny_llama, cfg)
        soft, ids = init_rows(embed, embed.weight, ctx.allowed, [1, 2, 3], cfg)
        return _Batch(ctx, p[rows], soft[rows], ids[rows], cfg, record_curve=False), soft

    theta = {}
    for wd in (0.0, 0.5):
        b, soft = batch(wd, [0, 1, 2])
        b.step(0)
        theta[wd] = b.theta.detach()
    torch.testing.assert_close(theta[0.0] - theta[0.5], 0.1 * 0.5 * soft, rtol=1e-4, atol=1e-7)
    full, _ = batch(0.5, [0, 1, 2])
    part, _ = batch(0.5, [1, 2])
    full.step(0)
    part.step(0)
    keep = torch.tensor([False, True, True])
    full._drop(keep, keep)  # row 0 leaves the batch
    full.step(1)
    part.step(1)
    torch.testing.assert_close(full.theta.detach(), part.theta.detach(), rtol=1e-5, atol=1e-7)


def test_stop_kl_nats_stops_a_row_at_the_first_step_its_kl_reaches_it(tiny_llama):
    p = targets(93, 4, seed=6)
    base = dict(max_steps=60, patience=60, lr=0.5)
    free = tune(tiny_llama, p, [0, 1, 2, 3], TuneConfig(**base), record_curve=True)
    assert not free.early_stopped.any()
    # a level between row 2's KLs at steps 10 and 11: some rows reach it sooner, some never
    level = float(free.curve[2, 10:12].mean())
    reached = (free.curve <= level).any(1)
    first = np.where(reached, np.argmax(free.curve <= level, axis=1), 59)  # the first step at or below it
    assert first[2] == 11 and reached.any() and not reached.all()
    res = tune(tiny_llama, p, [0, 1, 2, 3], TuneConfig(**base, stop_kl_nats=level))
    np.testing.assert_array_equal(res.early_stopped, reached)
    np.testing.assert_array_equal(res.steps, first + 1)
    assert (res.kl_min[reached] <= level).all() and (res.best_step[reached] == first[reached]).all()
    np.testing.assert_allclose(res.kl_min[~reached], free.kl_min[~reached], rtol=1e-5)
    # a KL equal to the level reaches it (one row alone: bit-identical curves)
    alone = tune(tiny_llama, p[2:3], [2], TuneConfig(**base), record_curve=True)
    assert (np.diff(alone.curve[0, :11]) < 0).all()  # step 10 is the first at its own KL
    res = tune(tiny_llama, p[2:3], [2], TuneConfig(**base, stop_kl_nats=float(alone.curve[0, 10])))
    assert res.steps[0] == 11 and res.best_step[0] == 10 and res.early_stopped[0]


def test_bad_input_is_refused(tiny_llama):
    with pytest.raises(DistreachError, match=r"expected \[n, 93\]"):
        tune(tiny_llama, np.ones((2, 10)) / 10, [0, 1], CFG)
    with pytest.raises(DistreachError, match="init seeds"):
        tune(tiny_llama, targets(tiny_llama.vocab_size, 2), [0], CFG)
    with pytest.raises(DistreachError, match="tuning.prefix_len"):
        TuneConfig(prefix_len=0)
    with pytest.raises(DistreachError, match="tuning.bos"):
        TuneConfig(bos="eos")


# each setting a tuning context is made from, with a value other than TuneConfig's default
OTHER_CONTEXT_SETTINGS = {"bos": "none", "exclude_special": False, "exclude_untypable": True}


def test_a_tuning_context_holds_its_model_s_bos_and_allowed_tokens_and_is_refused_under_other_settings(tiny_llama):
    from dataclasses import replace

    from distreach.engine import CONTEXT_KEYS, prompt_kl, tuning_context
    from distreach.tokens import usable_mask

    cfg = TuneConfig(method="hard", prefix_len=2, max_steps=3)
    p = targets(tiny_llama.vocab_size, 2)
    ctx = tuning_context(tiny_llama, cfg)
    bos = tiny_llama.tokenizer.bos_token_id
    assert (ctx.bos_id, ctx.dtype, ctx.device.type) == (bos, "fp32", "cpu") and bos is not None
    n = tiny_llama.embeddings.shape[0]
    np.testing.assert_array_equal(ctx.allowed.numpy(), usable_mask(tiny_llama.tokenizer, n, True))
    # the BOS keys and values: those of an ordinary forward of the BOS token through the whole model
    with torch.no_grad():
        layers = tiny_llama.model(torch.tensor([[bos]]), use_cache=True).cache.layers
    assert len(ctx.bos_kv) == len(layers) > 0
    for (k, v), layer in zip(ctx.bos_kv, layers):
        torch.testing.assert_close(k, layer.keys, rtol=0, atol=0)
        torch.testing.assert_close(v, layer.values, rtol=0, atol=0)
    none = tuning_context(tiny_llama, replace(cfg, bos="none"))
    assert none.bos_id is None and none.bos_kv is None
    np.testing.assert_array_equal(prompt_kl(none, p, [[5]]), prompt_kl(tiny_llama, p, [[5]], bos="none"))
    everything = tuning_context(tiny_llama, replace(cfg, exclude_special=False)).allowed
    np.testing.assert_array_equal(everything.numpy(), usable_mask(tiny_llama.tokenizer, n, False))
    assert everything.sum() > ctx.allowed.sum()
    # a context is refused under any other value of any setting it was made from
    assert set(OTHER_CONTEXT_SETTINGS) == set(CONTEXT_KEYS)
    for key, value in OTHER_CONTEXT_SETTINGS.items():
        assert getattr(cfg, key) != value
        with pytest.raises(DistreachError, match="tuning context made for"):
            tune(ctx, p, [0, 1], replace(cfg, **{key: value}))
    with pytest.raises(DistreachError, match="tuning context made for"):
        prompt_kl(ctx, p, [[5]], bos="none")


def test_out_of_memory_halves_the_batch_and_loses_no_row(tiny_llama, monkeypatch):
    import distreach.engine as engine

    p = targets(tiny_llama.vocab_size, 5, seed=11)
    expected = tune(tiny_llama, p, list(range(5)), TuneConfig(max_steps=12, batch_size=2))
    real_step = engine._Batch.step
    sizes = []

    def step(self, i):
        if i == 0:
            sizes.append(len(self.active))
        if i == 3 and self.target.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated")
        return real_step(self, i)

    monkeypatch.setattr(engine._Batch, "step", step)
    monkeypatch.setitem(engine.AUTO_BATCH, "cpu", 8)
    got = tune(tiny_llama, p, list(range(5)), TuneConfig(max_steps=12))
    # each batch's rows at its first step: all 5 (batch size 8), then 4, then 2 fits: rows 0-1, 2-3, 4
    assert sizes == [5, 4, 2, 2, 1] and len(got) == 5
    assert got.work["batch_rows"] == [2, 2, 1]  # the batches that ended, as the result records them
    np.testing.assert_allclose(got.kl_min, expected.kl_min, rtol=1e-5)
    assert (got.steps == expected.steps).all()


def test_bf16_model_is_bf16_and_tunes_to_finite_values_close_to_fp32(tiny_dirs):
    from distreach.models import load_materialised

    p = targets(93, 3, seed=12)
    cfg = TuneConfig(max_steps=20)
    models = {d: load_materialised(tiny_dirs["llama"], dtype=d, device="cpu")[0] for d in ("fp32", "bf16", "fp16")}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        assert {p.dtype for p in models[name].model.parameters()} == {dtype}, name
        assert models[name].embeddings.dtype == dtype
    res = {d: tune(models[d], p, [0, 1, 2], cfg) for d in ("fp32", "bf16")}
    assert np.isfinite(res["bf16"].kl_min).all()
    np.testing.assert_allclose(res["bf16"].kl_min, res["fp32"].kl_min, rtol=0.05)
    # tuned in bf16 indeed: bf16 rounding moves every row's minimum off the fp32 one
    assert (res["bf16"].kl_min != res["fp32"].kl_min).all()


def test_auto_dtype_follows_the_hardware(monkeypatch):
    import distreach.models as models

    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    assert models.auto_dtype("cpu") == "bf16"
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    assert models.auto_dtype("cpu") == "fp32"
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    # a GPU: bf16 where it computes bf16 natively, not where torch would emulate it (pre-Ampere)
    # and the GPU the device names, not the current one: here cuda:0 a V100 (7.0), cuda:1 an A100 (8.0)
    capability = {0: (7, 0), 1: (8, 0)}
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability[torch.device(d).index or 0])
    assert models.auto_dtype("cuda") == "fp32"  # the current device, cuda:0
    assert models.auto_dtype("cuda:0") == "fp32"
    assert models.auto_dtype("cuda:1") == "bf16"
    monkeypatch.setattr(torch.version, "hip", "6.2")  # ROCm: torch's rule, bf16 on every GPU
    assert models.auto_dtype("cuda:0") == "bf16"
    with pytest.raises(DistreachError, match="dtype must be one of"):
        models.resolve_dtype("int8")


def test_stop_reason_names_each_way_a_row_stops(tiny_llama):
    """A KL at the stop threshold, a hard sweep that changed nothing and the step cap are told apart."""
    p = targets(tiny_llama.vocab_size, 3, seed=2)
    reached = tune(tiny_llama, p, [0, 1, 2], TuneConfig(max_steps=50, stop_kl_nats=100.0))
    assert [STOP_REASONS[i] for i in reached.stop_reason] == ["target reached"] * 3 and (reached.steps == 1).all()
    hard = tune(tiny_llama, p, [0, 1, 2], TuneConfig(method="hard", candidates=8, max_steps=200, patience=200))
    why = [STOP_REASONS[i] for i in hard.stop_reason]
    assert set(why) <= {"converged", "step cap"} and "converged" in why
    assert all((s < 200) == (w == "converged") for s, w in zip(hard.steps, why))


def test_top_ids_are_a_stable_sort_s_first_k():
    """Each row's k most probable ids, ties in id order, as a stable sort of the whole row gives
    them: rows of distinct values, of ties at the k-th value (uniform over a subset, all equal),
    with zeros, and k past the row's support."""
    from distreach.engine import top_ids

    g = torch.Generator().manual_seed(0)
    v = 5000
    rows = [torch.softmax(torch.randn(v, generator=g) * 3, -1)]
    sub = torch.zeros(v)
    sub[torch.randperm(v, generator=g)[:100]] = 0.01
    rows += [sub, torch.full((v,), 1 / v)]
    mixed = torch.softmax(torch.randn(v, generator=g), -1)
    mixed[torch.randperm(v, generator=g)[:2000]] = mixed.max()  # many ties at the top
    rows.append(mixed / mixed.sum())
    probs = torch.stack(rows)
    for k in (0, 1, 20, 150, v, v + 5):
        want = torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :k]
        for dtype in (torch.float32, torch.bfloat16):
            assert torch.equal(top_ids(probs.to(dtype), k), want if dtype == torch.float32 else
                               torch.sort(probs.to(dtype), dim=-1, descending=True, stable=True).indices[:, :k]), (k, dtype)
    assert top_ids(probs[:0], 20).shape == (0, 20)
    assert top_ids(probs, v + 5).shape == (4, v)  # k past the vocabulary: all of it


def test_the_last_position_s_logits_pass_their_gradient_without_a_zero_filled_copy():
    """With one position kept (logits_to_keep=1) the logits of the last position are a view:
    their gradient is the logits' own (no [B, T, |V|] zeros written into); with more positions,
    the last one's."""
    from distreach.engine import last_logits

    class Ops(torch.utils._python_dispatch.TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    w = torch.randn(3, 50)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 1, 50, dtype=dtype, requires_grad=True)
        out = last_logits(x)
        assert out.shape == (3, 50) and out.dtype == torch.float32 and torch.equal(out, x[:, 0].float())
        loss = (out * w).sum()
        with Ops() as ops:
            loss.backward()
        # the backward pass of the loss and of the view: no zero-filled [3, 1, 50] to scatter into
        allowed = {"mul", "expand", "ones_like", "unsqueeze", "squeeze", "view", "detach", "_to_copy", "to"}
        assert set(ops.seen) <= allowed, ops.seen
        assert torch.equal(x.grad, w[:, None].to(dtype))
    many = torch.randn(3, 4, 50)
    assert torch.equal(last_logits(many), many[:, -1])
    one = torch.randn(1, 1, 50)  # a batch of one row keeps its row dimension
    assert last_logits(one).shape == (1, 50)


def test_inputs_longer_than_the_models_context_are_refused(tiny_llama):
    """The tiny Llama takes 64 positions: a prompt of 63 after BOS is tuned, one of 64 is refused
    before any step, and so is a text scored past them."""
    from distreach import api

    p = np.full((1, tiny_llama.vocab_size), 1 / tiny_llama.vocab_size, dtype=np.float32)
    assert tune(tiny_llama, p, [0], TuneConfig(prefix_len=63, max_steps=1)).kl_min.shape == (1,)
    with pytest.raises(DistreachError, match=r"^a prompt of prefix_len 64 after BOS: 65 positions, more than model "
                                             r"tiny-llama's context of 64$"):
        tune(tiny_llama, p, [0], TuneConfig(prefix_len=64, max_steps=1))
    assert tune(tiny_llama, p, [0], TuneConfig(prefix_len=64, max_steps=1, bos="none")).kl_min.shape == (1,)
    target = api.make_target("vanilla", tiny_llama.vocab_size, 2.0, "bits")
    fits, too_long = " the" * 63, " the" * 64  # one token each
    assert len(tiny_llama.tokenizer(fits, add_special_tokens=False).input_ids) == 63
    assert api.score_texts(tiny_llama, target, [fits]).height == 1
    with pytest.raises(DistreachError, match=r"^text ' the the .*': 65 positions, more than model tiny-llama's context of 64$"):
        api.score_texts(tiny_llama, target, [too_long])
