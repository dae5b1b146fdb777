"""Fig. 3's data: the model's next-token distribution after a text, an Eq. 1 target of the same
entropy and what a soft prompt tuned on that target produces; and the figure drawn from it."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from distreach import figures
from distreach.errors import DistreachError
from distreach.io import arrow_metadata, read_arrow
from distreach.nexttoken import write_shapes

from .test_figures import svg_problems

TUNING = {"max_steps": 30, "patience": 5}


@pytest.fixture(scope="module")
def shapes(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("fig03") / "tiny.arrow"
    write_shapes(tiny_dirs["llama"], out, text="the house", unit="bits", seed=0, tuning=TUNING, top=8, device="cpu",
                 dtype="fp32")
    return out


def test_the_lm_distribution_its_eq1_target_and_the_tuned_one(shapes, tiny_llama):
    table = read_arrow(shapes)
    df = pl.from_arrow(table)
    assert df["distribution"].to_list() == ["lm", "vanilla", "tuned"]
    h = dict(zip(df["distribution"], df["entropy"]))
    assert h["vanilla"] == pytest.approx(h["lm"], abs=0.01)  # the Eq. 1 target's tolerance
    logp = np.stack(df["logprobs"].to_list())
    # the LM's row is the model's next-token distribution after BOS and the text, by an ordinary forward
    ids = [tiny_llama.tokenizer.bos_token_id] + tiny_llama.tokenizer("the house", add_special_tokens=False).input_ids
    with torch.no_grad():
        want = torch.log_softmax(tiny_llama.model(torch.tensor([ids])).logits[0, -1], -1).numpy()
    np.testing.assert_allclose(logp[0], want, atol=1e-5)
    # labels name the model and the text; top tokens are the most probable ones, with their text
    assert df["label"][0].startswith('tiny-llama after "the house" (H = ')
    for row, lp in zip(df.iter_rows(named=True), logp):
        assert row["top_ids"] == np.argsort(-lp, kind="stable")[:8].tolist()
        assert row["top_tokens"] == tiny_llama.tokenizer.convert_ids_to_tokens(row["top_ids"])
    # the tuned row: KL from the target as the kept prompt gives it, equal to the tuning's kl_min
    meta = arrow_metadata(table)
    assert meta["text"] == "the house" and meta["bos"] == "bos" and meta["tuning"]["max_steps"] == 30
    p = np.exp(logp[1].astype(np.float64))
    kl = float((p * (logp[1] - logp[2])).sum()) / np.log(2)
    assert df["kl"][2] == pytest.approx(kl, rel=1e-4) == pytest.approx(meta["tuned"]["kl_min"], rel=1e-4)
    assert df["kl"][0] is None and df["kl"][1] == 0.0


def test_the_soft_prompt_tunes_with_the_configs_tuning_of_another_method(tiny_dirs, tmp_path):
    """The config's tuning may be gcg's (every experiment gcg, say): Fig. 3's soft prompt leaves out
    what is not a soft prompt's (distreach.settings.soft_tuning)."""
    tuning = {**TUNING, "max_steps": 3, "method": "gcg", "gcg_width": 8, "readable": False}
    df = pl.from_arrow(write_shapes(tiny_dirs["llama"], tmp_path / "g.arrow", text="the house", unit="bits", seed=0,
                                    tuning=tuning, device="cpu", dtype="fp32"))
    assert df["distribution"].to_list() == ["lm", "vanilla", "tuned"]


def test_without_tuning_and_with_a_text_of_no_tokens(tiny_dirs, tmp_path):
    df = pl.from_arrow(write_shapes(tiny_dirs["llama"], tmp_path / "a.arrow", text="the", unit="nats", seed=0,
                                    tuning=TUNING, tune=False, device="cpu"))
    assert df["distribution"].to_list() == ["lm", "vanilla"] and set(df["entropy_unit"]) == {"nats"}
    with pytest.raises(DistreachError, match="figures.fig03.text: '' has no tokens"):
        write_shapes(tiny_dirs["llama"], tmp_path / "b.arrow", text="", unit="bits", seed=0, tuning=TUNING, device="cpu")
    assert not (tmp_path / "b.arrow").exists()


@pytest.mark.parametrize("tune", [True, False])
def test_the_bos_token_is_resolved_once(tiny_dirs, tmp_path, monkeypatch, tune):
    """The BOS token before the text, in the provenance and before the soft prompt: resolved once."""
    import sys

    from distreach import tokens

    calls, real = [], tokens.resolve_bos

    def counted(*args, **kwargs):
        calls.append(args[1:])
        return real(*args, **kwargs)

    for module in [m for n, m in sys.modules.items() if n.startswith("distreach")]:
        if getattr(module, "resolve_bos", None) is real:  # the function wherever it is imported
            monkeypatch.setattr(module, "resolve_bos", counted)
    df = pl.from_arrow(write_shapes(tiny_dirs["llama"], tmp_path / "s.arrow", text="the house", unit="bits", seed=0,
                                    tuning={"max_steps": 3, "patience": 3}, tune=tune, device="cpu"))
    assert len(df) == (3 if tune else 2) and calls == [("auto", "tiny-llama")]


def test_fig03_is_drawn_with_its_tokens_labelled(shapes, tmp_path):
    figures.draw("fig03", {"nexttoken": [str(shapes)]}, {"model": "tiny", "top": 8}, tmp_path / "fig03")
    svg = (tmp_path / "fig03.svg").read_text()
    df = pl.read_ipc(shapes)
    for row in df.iter_rows(named=True):
        assert f'1. "{row["top_tokens"][0]}"' in svg and row["label"].replace('"', "&quot;") in svg
    assert "for a log scale" in svg and svg_problems(svg) == []


def test_rank_curve_keeps_the_head_and_thins_the_tail():
    logp = np.log(np.r_[np.full(1000, 0.5 / 1000), np.full(9000, 0.5 / 9000)])
    logp = np.r_[logp, np.full(5, -np.inf)]  # padding rows
    ranks, p = figures.rank_curve(logp, head=100, points=50)
    assert ranks[:100].tolist() == list(range(1, 101)) and ranks[-1] == 10000 and len(ranks) <= 150
    assert (np.diff(ranks) > 0).all() and p[0] == pytest.approx(0.5 / 1000) and p[-1] == pytest.approx(0.5 / 9000)


def test_a_text_longer_than_the_models_context_is_refused(tiny_llama):
    """Fig. 3's text after BOS: 63 tokens fit the tiny Llama's 64 positions, 64 do not."""
    from distreach.nexttoken import text_distribution

    bos = tiny_llama.tokenizer.bos_token_id
    ids, _ = text_distribution(tiny_llama, " the" * 63, bos)
    assert len(ids) == 63
    with pytest.raises(DistreachError, match=r"^figures\.fig03\.text ' the the .*': 65 positions, more than model "
                                             r"tiny-llama's context of 64$"):
        text_distribution(tiny_llama, " the" * 64, bos)
