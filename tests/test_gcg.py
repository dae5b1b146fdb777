"""The gcg method: readable prompts whose text gives kl_min, rows that never interact in a batch,
checkpoints that resume to the same result, and the search itself (gradient-ranked candidates,
the best one taken)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distreach.engine import TuneConfig, tune
from distreach.gcg import is_text
from distreach.tuning import hard_prompt_columns

from .conftest import TINY_WORDS, load_script
from .test_engine import targets

CFG = TuneConfig(method="gcg", prefix_len=4, max_steps=12, patience=12, gcg_width=16, gcg_topk=32, bos="bos")


@pytest.fixture(scope="module")
def tiny_bpe(tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer (merges, multi-byte characters): many token
    sequences decode to text that encodes to other tokens, or to broken characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from distreach.models import ModelSpec, load_materialised, materialise

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<bos>", "<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([" ".join(TINY_WORDS), "café über naïve 日本語 ünïcödé"] * 3, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                                         initializer_range=0.3))  # wide weights: prompts move q a lot
    root = tmp_path_factory.mktemp("bpe")
    model.save_pretrained(root / "src", safe_serialization=True)
    tok.save_pretrained(root / "src")
    materialise(ModelSpec.from_config("tiny-bpe", {"source": {"local": str(root / "src")}}), root / "m")
    return load_materialised(root / "m", dtype="fp32", device="cpu")[0]


def test_readable_prompts_are_text_that_gives_kl_min(tiny_bpe):
    p = targets(tiny_bpe.vocab_size, 6, seed=4, temp=3.0)
    tok = tiny_bpe.tokenizer
    res = tune(tiny_bpe, p, list(range(6)), CFG)
    cols = hard_prompt_columns(tiny_bpe, CFG, res, p)
    for ids, init, text in zip(res.best_ids.tolist(), res.init_ids.tolist(), cols["text"]):
        assert ids != init  # the search moved
        assert "\ufffd" not in text and tok(text, add_special_tokens=False).input_ids == ids
    np.testing.assert_allclose(cols["kl_roundtrip"], res.kl_min, rtol=1e-5, atol=1e-6)
    # the filter is what makes it so: without it, this tokenizer gives prompts that are not their text
    loose = tune(tiny_bpe, p, list(range(6)), TuneConfig(**{**CFG.__dict__, "readable": False}))
    assert not all(is_text(tok, ids) for ids in loose.best_ids.tolist())


def test_gcg_lowers_kl_far_below_its_start_and_each_step_takes_the_best_candidate(tiny_bpe):
    p = targets(tiny_bpe.vocab_size, 4, seed=5, temp=3.0)
    res = tune(tiny_bpe, p, [0, 1, 2, 3], CFG, record_curve=True)
    start = res.curve[:, 0]
    assert (res.kl_min < 0.8 * start).all(), (res.kl_min, start)
    # a width-1 search takes whatever it draws: its curve is a random walk, not a descent
    walk = tune(tiny_bpe, p, [0, 1, 2, 3], TuneConfig(**{**CFG.__dict__, "gcg_width": 1}), record_curve=True)
    assert np.median(res.kl_min) < np.median(walk.kl_min)


def test_each_step_moves_to_its_lowest_candidate_even_when_worse(tiny_bpe, monkeypatch):
    """nanoGCG's move rule: a row's next prompt is its step's candidate of lowest KL, also where that
    KL is above the current prompt's (the KL a row records at step s + 1 is that candidate's)."""
    from distreach import gcg

    scored = []  # per step: (the batch's rows, each candidate's KL [B, W])
    real = gcg.GCGBatch.candidate_losses

    def spy(self, flat, ok, rows):
        loss = real(self, flat, ok, rows)
        scored.append((self.active.clone(), loss.view(len(self.ids), -1).clone()))
        return loss

    monkeypatch.setattr(gcg.GCGBatch, "candidate_losses", spy)
    p = targets(tiny_bpe.vocab_size, 4, seed=8, temp=3.0)
    res = tune(tiny_bpe, p, [31, 32, 33, 34], CFG, record_curve=True)
    assert len(scored) == CFG.max_steps - 1  # one batch; no candidates after the last step
    worse = 0
    for step, (rows, loss) in enumerate(scored):
        best = loss.min(-1).values
        assert torch.isfinite(best).all()  # every row had a readable candidate
        now, after = res.curve[rows.numpy(), step], res.curve[rows.numpy(), step + 1]
        np.testing.assert_allclose(after, best.numpy(), rtol=1e-4, atol=1e-6)
        worse += int((best.numpy() > now * (1 + 1e-4)).sum())
    assert worse > 0  # the rule was tested where it matters: moves to a worse prompt happened


def test_rows_tuned_together_equal_rows_tuned_alone(tiny_bpe):
    p = targets(tiny_bpe.vocab_size, 4, seed=6, temp=3.0)
    seeds = [21, 22, 23, 24]
    cfg = TuneConfig(**{**CFG.__dict__, "patience": 3, "max_steps": 15})
    together = tune(tiny_bpe, p, seeds, cfg)
    assert len(set(together.steps.tolist())) > 1, "rows should stop at different steps"
    for i in range(4):
        alone = tune(tiny_bpe, p[i: i + 1], seeds[i: i + 1], cfg)
        assert alone.best_ids[0].tolist() == together.best_ids[i].tolist()
        assert (alone.steps[0], alone.best_step[0]) == (together.steps[i], together.best_step[i])
        np.testing.assert_allclose(alone.kl_min[0], together.kl_min[i], rtol=1e-5)


class Stop(Exception):
    pass


def test_a_stopped_search_resumes_from_its_checkpoint_to_the_same_result(tiny_bpe, tmp_path):
    p = targets(tiny_bpe.vocab_size, 5, seed=7, temp=3.0)
    cfg = TuneConfig(**{**CFG.__dict__, "batch_size": 3})
    fresh = tune(tiny_bpe, p, list(range(5)), cfg)
    ckpt = tmp_path / "g.ckpt"
    starts = []

    def stop(step, active):
        starts.extend([step] if step == 0 else [])
        if len(starts) == 2 and step == 5:  # mid-way through the second batch
            raise Stop

    with pytest.raises(Stop):
        tune(tiny_bpe, p, list(range(5)), cfg, on_step=stop, checkpoint=ckpt, checkpoint_seconds=0)
    resumed = tune(tiny_bpe, p, list(range(5)), cfg, checkpoint=ckpt)
    assert resumed.work["resumed_from"] == {"row": 3, "step": 5}
    assert resumed.work["batch_rows"] == fresh.work["batch_rows"] == [3, 2]  # the checkpoint's batch counted too
    for name in ("kl_min", "best_step", "steps", "best_ids", "init_ids", "q_top_ids"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(fresh, name), err_msg=name)


def test_candidates_draw_from_the_tokens_the_gradient_ranks_best_and_change_gcg_replace_positions(tiny_bpe, monkeypatch):
    """With gcg_topk 1 every candidate holds, at the positions it changes, the argmin over allowed
    tokens of e(x) . g, the linear score of the paper's hard update; with gcg_replace 2 a candidate
    differs from the current prompt at 2 positions at most, and some at exactly 2."""
    from distreach.engine import tuning_context
    from distreach.gcg import GCGBatch
    from distreach.infotheory import kl

    lm = tiny_bpe
    cfg = TuneConfig(**{**CFG.__dict__, "gcg_topk": 1, "gcg_replace": 2, "readable": False})
    p = torch.tensor(targets(lm.vocab_size, 2, seed=8, temp=3.0))
    embed = lm.model.get_input_embeddings()
    ctx = tuning_context(lm, cfg)
    allowed = ctx.allowed
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    batch = GCGBatch(ctx, p, ids, cfg, False, [1, 2], [0])
    drawn = []
    real_draw = GCGBatch._draw
    monkeypatch.setattr(GCGBatch, "_draw", lambda self, top: drawn.append(real_draw(self, top)) or drawn[-1])
    batch.step(0)
    bos = embed(torch.tensor([[lm.tokenizer.bos_token_id]]))
    for r in range(2):
        e = embed(ids[r: r + 1]).detach().requires_grad_(True)
        logits = lm.model(inputs_embeds=torch.cat([bos, e], 1)).logits[:, -1]
        kl(p[r: r + 1], torch.log_softmax(logits, -1)).sum().backward()
        scores = (e.grad[0] @ embed.weight.T).masked_fill(~allowed, float("inf"))  # [L, V]
        best = scores.argmin(-1)
        cand = drawn[0][r]  # [W, L]
        changed = cand != ids[r]
        assert (changed.sum(-1) <= 2).all() and (changed.sum(-1) == 2).any()
        assert (cand[changed] == best.expand_as(cand)[changed]).all()


def scored_both_ways(lm, bos: str):
    """Candidates of 3 rows scored by ``candidate_losses`` (in passes of a few candidates, so a
    group of first-changed positions takes several) and by whole forward passes."""
    from distreach.engine import tuning_context
    from distreach.gcg import GCGBatch

    cfg = TuneConfig(**{**CFG.__dict__, "bos": bos, "readable": False})
    ctx = tuning_context(lm, cfg)
    p = torch.tensor(targets(lm.vocab_size, 3, seed=9, temp=3.0))
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]])
    batch = GCGBatch(ctx, p, ids[[2, 0, 1]], cfg, False, [1, 2, 3], [0])
    batch.active = torch.tensor([2, 0, 1])  # batch row r holds target row active[r], as after rows stop
    batch.PASS = 2  # with 3 rows: 12 candidates per whole pass
    W, L = 30, ids.shape[1]
    gen = torch.Generator().manual_seed(0)
    flat = batch.ids.repeat_interleave(W, 0)
    for c in range(len(flat)):  # candidate w of a row changes positions w % (L + 1).. (none when that is L)
        w = c % W % (L + 1)
        flat[c, w:] = torch.randint(40, 300, (L - w,), generator=gen)
    ok = torch.ones(len(flat), dtype=torch.bool)
    ok[[1, 9, 40]] = False
    got = batch.candidate_losses(flat, ok, batch.active)
    with torch.no_grad():
        whole = batch.losses(batch.embed(flat), batch.active.repeat_interleave(W))[0]
    assert torch.isinf(got[~ok]).all()
    return got[ok], whole[ok].float()


@pytest.mark.parametrize("bos", ["bos", "none"])
def test_candidates_scored_from_their_prompts_cached_positions_equal_whole_forward_passes(tiny_bpe, bos):
    """A candidate's KL, computed from its row's prompt's keys and values of the positions before
    its first change, equals the KL of a forward pass over the whole candidate, for changes at
    every position (and none); candidates refused (ok False) get inf."""
    got, whole = scored_both_ways(tiny_bpe, bos)
    torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-6)


def test_a_model_whose_layers_keep_a_sliding_window_scores_whole_candidates(tiny_bpe, tmp_path):
    """Gemma-3 layers with a sliding window shorter than BOS + prompt keep only its last positions:
    their keys and values cannot start a candidate, which is then scored by a whole forward pass."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from distreach.models import ModelSpec, load_materialised, materialise

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=tiny_bpe.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=3, layer_types=["sliding_attention", "full_attention"],
        bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.3))
    model.save_pretrained(tmp_path / "src", safe_serialization=True)
    tiny_bpe.tokenizer.save_pretrained(tmp_path / "src")
    materialise(ModelSpec.from_config("tiny-gemma3", {"source": {"local": str(tmp_path / "src")}}), tmp_path / "m")
    lm = load_materialised(tmp_path / "m", dtype="fp32", device="cpu")[0]
    got, whole = scored_both_ways(lm, "bos")
    torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-6)


def test_gcg_settings_are_refused_for_other_methods_with_the_key_named():
    from distreach.errors import DistreachError

    for key, value in (("gcg_width", 8), ("gcg_topk", 4), ("gcg_replace", 2), ("readable", False)):
        with pytest.raises(DistreachError, match=rf"^tuning\.{key}: a setting of method gcg only \(method is hard\)$"):
            TuneConfig(method="hard", **{key: value})
    # special tokens are markup, not text: a readable search keeps them out
    with pytest.raises(DistreachError, match=r"^tuning\.exclude_special: false puts special-token markup in readable"):
        TuneConfig(method="gcg", exclude_special=False)
    assert not TuneConfig(method="gcg", exclude_special=False, readable=False).readable
    # a candidate changes at most every position of the prompt
    assert TuneConfig(method="gcg", prefix_len=3, gcg_replace=3).gcg_replace == 3
    with pytest.raises(DistreachError, match=r"^tuning\.gcg_replace: a candidate cannot change more positions than the "
                                             r"prompt's 3 \(got 4\)$"):
        TuneConfig(method="gcg", prefix_len=3, gcg_replace=4)


def test_gcg_has_its_own_patience_unless_one_is_set():
    from distreach.methods import METHODS
    from distreach.settings import GCG_PATIENCE, PATIENCE

    assert GCG_PATIENCE != PATIENCE
    for method in METHODS:
        assert TuneConfig(method=method).patience == (GCG_PATIENCE if method == "gcg" else PATIENCE)
        assert TuneConfig(method=method, patience=7).patience == 7


@pytest.mark.parametrize("files", [("config.yaml", "configs/gcg.yaml"), ("configs/paper.yaml",)])
def test_every_tuning_job_of_the_shipped_configs_runs_with_its_methods_patience(files):
    """The configs leave patience to the method: the paper's for its methods, gcg's own for gcg
    (config.yaml with the gcg overlay, as the README runs it, and the paper config)."""
    import yaml
    from snakemake.utils import update_config, validate

    from distreach.config import check_config
    from distreach.settings import GCG_PATIENCE, PATIENCE
    from distreach.jobs import tuning_jobs
    from distreach.schema import SCHEMA_PATH

    repo = Path(__file__).resolve().parents[1]
    cfg = {}
    for f in files:
        update_config(cfg, yaml.safe_load((repo / f).read_text()))
    check_config(cfg, SCHEMA_PATH, validate)  # fills in the schema's defaults, as the workflow does
    jobs = tuning_jobs(cfg)
    shards = [(key, m) for key, job in jobs.items() for m in job["shards"]]
    assert {"gcg", "soft", "hard"} <= {m["method"] for _, m in shards}
    for key, m in shards:
        want = GCG_PATIENCE if TuneConfig(**m["tuning"]).method == "gcg" else PATIENCE
        assert TuneConfig(**m["tuning"]).patience == want, key


def test_the_benchmarks_patience_rule_stops_where_the_engine_stops(tiny_bpe):
    """benchmarks/gcg.py's patience_stop, applied to a row's curve without patience, gives the
    steps and lowest KL of the same row run with that patience."""
    bench = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "gcg.py")
    assert bench.patience_stop(np.array([5, 4, 4, 4, 3, 3, 3, 3.0]), 2, 0.0) == (4, 4.0)
    assert bench.patience_stop(np.array([5, 4, 4, 4, 3, 3, 3, 3.0]), 3, 0.0) == (8, 3.0)
    assert bench.patience_stop(np.array([1.0, 0.99995, 0.9999, 0.5]), 2, 1e-4) == (3, 0.9999)  # too small a gain
    p = targets(tiny_bpe.vocab_size, 4, seed=8, temp=3.0)
    seeds = [31, 32, 33, 34]
    long = tune(tiny_bpe, p, seeds, TuneConfig(**{**CFG.__dict__, "patience": 40, "max_steps": 40}), record_curve=True)
    short = tune(tiny_bpe, p, seeds, TuneConfig(**{**CFG.__dict__, "patience": 3, "max_steps": 40}))
    stops = [bench.patience_stop(long.curve[i], 3, CFG.min_delta) for i in range(4)]
    assert len({s for s, _ in stops}) > 1 and max(s for s, _ in stops) < 40  # rows stop at different steps, by patience
    assert [s for s, _ in stops] == short.steps.tolist()
    np.testing.assert_allclose([k for _, k in stops], short.kl_min, rtol=1e-6)
