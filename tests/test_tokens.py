"""Usable tokens and the BOS policy (distreach.tokens) on tokenizers with reserved, unused and
special tokens and output rows past the tokenizer, as Llama-3, Gemma and Qwen2.5 have."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distreach.engine import TuneConfig, allowed_tokens, init_rows, tune
from distreach.errors import DistreachError
from distreach.families import LM_BATCH, lm_generated, outlier_targets, OutlierSettings, pos_uniform_targets, shuffled
from distreach.models import LoadedModel
from distreach.targets import logprobs
from distreach.tokens import is_reserved, resolve_bos, usable_ids, usable_mask, vocab_support

from .conftest import tiny_tokenizer

PLACEHOLDERS = ["<|reserved_special_token_0|>", "<|reserved_special_token_17|>", "<unused0>", "<unused42>", "[unused3]"]


def placeholder_tokenizer(bos: bool = True):
    """The tiny tokenizer plus placeholders added as *plain* (non-special) tokens, so only their
    names mark them, and a special chat token; optionally without a BOS token."""
    tok = tiny_tokenizer()
    tok.add_tokens(PLACEHOLDERS, special_tokens=False)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    if not bos:
        tok.bos_token = None
    return tok


def test_reserved_names():
    for p in PLACEHOLDERS + ["<extra_id_5>", "<|extra_3|>"]:
        assert is_reserved(p), p
    for p in ["house", "<unused>", "unused0", "<|reserved_special_token|>", "Ġ<unused0>", None]:
        assert not is_reserved(p), p


def test_usable_mask_excludes_special_reserved_and_padding():
    tok = placeholder_tokenizer()
    rows = len(tok) + 10  # padded output rows, as Qwen2.5's
    ok = usable_mask(tok, rows)
    assert ok.shape == (rows,) and vocab_support(tok, rows) == len(tok)
    bad = set(tok.all_special_ids) | set(tok.convert_tokens_to_ids(PLACEHOLDERS)) | set(range(len(tok), rows))
    assert set(np.flatnonzero(~ok)) == bad
    assert set(usable_ids(tok, rows)) == set(range(rows)) - bad
    # without exclusion only padding is left out
    assert set(np.flatnonzero(~usable_mask(tok, rows, exclude_special=False))) == set(range(len(tok), rows))
    # an output layer smaller than the tokenizer caps |V|
    assert vocab_support(tok, 50) == 50 and usable_mask(tok, 50).shape == (50,)


def test_hard_positions_and_inits_draw_only_usable_tokens():
    tok = placeholder_tokenizer()
    rows = len(tok) + 7
    cfg = TuneConfig(method="hybrid", prefix_len=6, n_soft=2)
    allowed = allowed_tokens(tok, rows, cfg)
    assert torch.equal(allowed, torch.from_numpy(usable_mask(tok, rows)))
    embed = torch.nn.Embedding(rows, 4)
    soft, drawn = init_rows(embed, embed.weight, allowed, range(300), cfg)
    assert set(drawn.flatten().tolist()) <= set(usable_ids(tok, rows).tolist())


def test_resolve_bos_policies():
    with_bos, without = placeholder_tokenizer(), placeholder_tokenizer(bos=False)
    assert resolve_bos(with_bos.bos_token_id, "auto") == with_bos.bos_token_id == 1
    assert resolve_bos(with_bos.bos_token_id, "bos") == 1
    assert resolve_bos(with_bos.bos_token_id, "none") is None
    assert resolve_bos(without.bos_token_id, "auto") is None
    assert resolve_bos(without.bos_token_id, "none") is None
    with pytest.raises(DistreachError, match="has no BOS token; use bos: auto or none"):
        resolve_bos(without.bos_token_id, "bos", "qwen")
    with pytest.raises(DistreachError, match="tuning.bos: must be one of"):
        resolve_bos(with_bos.bos_token_id, "yes")
    with pytest.raises(DistreachError, match="tuning.bos"):
        TuneConfig(bos="always")


class _Recorder(torch.nn.Module):
    """A causal-LM stand-in with padded output rows that records the ids it is given."""

    def __init__(self, n_rows, d=8):
        super().__init__()
        self.emb = torch.nn.Embedding(n_rows, d)
        self.head = torch.nn.Linear(d, n_rows, bias=False)
        self.seen, self.passes = [], 0

    def get_input_embeddings(self):
        return self.emb

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids=None, inputs_embeds=None, logits_to_keep=1):
        if input_ids is not None:
            self.seen += input_ids.tolist()  # every prompt of a batch
            self.passes += 1
            inputs_embeds = self.emb(input_ids)
        logits = self.head(inputs_embeds.cumsum(1))[:, -logits_to_keep:]
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize("bos", [True, False])
def test_lm_generated_prompts_policy_and_padding(bos):
    tok = placeholder_tokenizer(bos=bos)
    rows = len(tok) + 9
    model = _Recorder(rows)
    loaded = LoadedModel("stand-in", model, tok)
    table = lm_generated(loaded, n=40, prompt_len=6, unit="nats", seed=3, bos="auto")
    usable = set(usable_ids(tok, rows).tolist())
    assert len(model.seen) == 40 and len({tuple(ids) for ids in model.seen}) == 40  # one prompt per target
    assert model.passes == math.ceil(40 / LM_BATCH) == 2  # in batches of at most LM_BATCH prompts
    p = np.exp(logprobs(table).astype(np.float64))
    for r, ids in enumerate(model.seen):  # each target is the model's distribution after its prompt, over |V|
        with torch.no_grad():
            logits = model.head(model.emb(torch.tensor(ids)).cumsum(0))[-1, : len(tok)]
        np.testing.assert_allclose(p[r, : len(tok)], torch.softmax(logits.double(), -1).numpy(), rtol=1e-5, atol=1e-7)
    for ids in model.seen:
        if bos:
            assert ids[0] == tok.bos_token_id and len(ids) == 7
            ids = ids[1:]
        else:
            assert len(ids) == 6
        assert set(ids) <= usable
    assert set(table.column("lm_bos").to_pylist()) == {"bos" if bos else "none"}
    assert set(table.column("lm_bos_policy").to_pylist()) == {"auto"}
    assert set(table.column("lm_prompt_len").to_pylist()) == {6}
    assert (p[:, len(tok):] == 0).all()
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    # shuffling keeps the padding rows at 0
    sh = np.exp(logprobs(shuffled(table, 2, support=len(tok))).astype(np.float64))
    assert (sh[:, len(tok):] == 0).all()


def test_outlier_ids_and_pos_draws_come_from_the_pool():
    pool = np.arange(10, 200, 3)
    table = outlier_targets(200, [2.0], "nats", OutlierSettings(ks=(1, 5), per_level=4, seed=2), pool)
    p = np.exp(logprobs(table).astype(np.float64))
    for row, pr in zip(table.to_pylist(), p):
        top = np.argsort(pr)[::-1][: row["n_outliers"]]
        assert set(top) <= set(pool.tolist())
    import polars as pl

    pos = pl.DataFrame({"token_id": np.arange(12), "pos": ["NOUN"] * 12, "kept": [True] * 12})
    usable = np.ones(15, dtype=bool)
    usable[[0, 3, 5]] = False
    t = pos_uniform_targets(pos, 15, ["NOUN"], 4, 20, "nats", usable=usable)
    drawn = {i for ids in t.column("support_ids").to_pylist() for i in ids}
    assert drawn and not drawn & {0, 3, 5}


def test_tuning_rejects_targets_with_mass_on_padding_rows():
    tok = placeholder_tokenizer()
    rows = len(tok) + 4
    loaded = LoadedModel("stand-in", _Recorder(rows), tok)
    p = np.full((1, rows), 1 / rows, dtype=np.float32)
    with pytest.raises(DistreachError, match="padding"):
        tune(loaded, p, [0], TuneConfig(max_steps=1))


def test_scoring_rejects_targets_with_mass_on_padding_rows(tmp_path):
    """``api.score_texts`` refuses what tuning refuses, before any forward pass (the stand-in has none)."""
    from distreach import api

    tok = placeholder_tokenizer()
    rows = len(tok) + 4
    loaded = LoadedModel("stand-in", _Recorder(rows), tok)
    np.save(tmp_path / "p.npy", np.full((1, rows), 1 / rows, dtype=np.float32))
    with pytest.raises(DistreachError, match=r"^targets put probability on output rows \d+\.\. of model stand-in, which are padding"):
        api.score_texts(loaded, api.read_target(tmp_path / "p.npy", loaded), ["a"])
