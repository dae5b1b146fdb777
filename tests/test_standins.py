"""Stand-ins for the paper's models (distreach.standins) and configs/paper-stand-ins.yaml: every
paper architecture has a stand-in with its class and special-token layout, a stand_in model
source materialises it, the stand-ins config is the paper study, and the CLI tunes on stand-in
folders of every architecture with each row's BOS recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from distreach import cli
from distreach.io import read_arrow
from distreach.targets import logprobs
from distreach.tokens import usable_mask
from distreach.models import ModelSpec, materialise
from distreach.paper_standins import TINY_TUNING, stand_ins_config
from distreach.schema import schema
from distreach.standins import ARCHITECTURES, stand_in_model, stand_in_tokenizer, write_stand_in

REPO = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
STAND_INS = yaml.safe_load((REPO / "configs/paper-stand-ins.yaml").read_text())

# the transformers class of each hub model family of the paper (as its config.json names it)
HUB_CLASSES = {
    "openai-community/gpt2": "GPT2LMHeadModel",
    "meta-llama/": "LlamaForCausalLM",
    "tiiuae/falcon": "FalconForCausalLM",
    "Qwen/Qwen2.5": "Qwen2ForCausalLM",
}


def hub_class(hub_id: str) -> str:
    found = [c for prefix, c in HUB_CLASSES.items() if hub_id.startswith(prefix)]
    assert len(found) == 1, f"paper model {hub_id}: add its class to HUB_CLASSES"
    return found[0]


def test_every_paper_model_has_a_stand_in_of_its_class():
    hub = {name: e["source"]["hf"] for name, e in PAPER["models"].items() if "hf" in e["source"]}
    assert hub, "the paper config names no hub model"
    sources = [STAND_INS["models"][name]["source"] for name in hub]
    for (name, hub_id), source in zip(hub.items(), sources):
        arch = source["stand_in"]
        assert ARCHITECTURES[arch] == hub_class(hub_id), (name, arch)
        assert arch.endswith("-instruct") == ("instruct" in hub_id.lower()), (name, arch)
    # two models of one architecture are different stand-ins
    seeds = [(s["stand_in"], s["seed"]) for s in sources]
    assert len(set(seeds)) == len(seeds)


def test_the_schema_offers_every_stand_in():
    source = schema()["definitions"]["source"]["oneOf"]
    (stand_in,) = [s for s in source if s["required"] == ["stand_in"]]
    assert stand_in["properties"]["stand_in"]["enum"] == list(ARCHITECTURES)


@pytest.mark.parametrize("arch", ["llama3", "qwen2"])
def test_a_stand_in_source_materialises_the_saved_stand_in(tmp_path, arch):
    """A stand_in source gives the weights and tokenizer of the stand-in saved with
    write_stand_in and materialised as a local folder."""
    write_stand_in(arch, tmp_path / "saved", seed=3)
    local = materialise(ModelSpec.from_config("a", {"source": {"local": str(tmp_path / "saved")}}), tmp_path / "a")
    built = materialise(ModelSpec.from_config("b", {"source": {"stand_in": arch, "seed": 3}}), tmp_path / "b")
    assert built["weights_sha256"] == local["weights_sha256"]
    assert built["architecture"] == ARCHITECTURES[arch] and built["source_kind"] == "stand_in"
    from transformers import AutoTokenizer

    a, b = (AutoTokenizer.from_pretrained(tmp_path / name) for name in "ab")
    assert a.get_vocab() == b.get_vocab() and a.all_special_ids == b.all_special_ids
    assert (a.bos_token_id, a.eos_token_id) == (b.bos_token_id, b.eos_token_id)
    assert a("I love the house").input_ids == b("I love the house").input_ids
    other = materialise(ModelSpec.from_config("c", {"source": {"stand_in": arch, "seed": 4}}), tmp_path / "c")
    assert other["weights_sha256"] != built["weights_sha256"]


def test_stand_ins_config_is_the_paper_study():
    assert stand_ins_config(PAPER) == STAND_INS, "configs/paper-stand-ins.yaml is stale: run python scripts/paper_standins.py"
    assert STAND_INS["figures"] == PAPER["figures"]
    assert STAND_INS["experiments"].keys() == PAPER["experiments"].keys()
    for name, exp in PAPER["experiments"].items():
        copy = STAND_INS["experiments"][name]
        for key in set(exp) - {"inits", "shards", "tuning"}:
            assert copy[key] == exp[key], (name, key)
        # an experiment's own settings are kept, except a step budget, which gives way to the tiny one
        assert copy.get("tuning", {}) == {k: v for k, v in exp.get("tuning", {}).items() if k not in TINY_TUNING}, name
    assert STAND_INS["targets"].keys() == PAPER["targets"].keys()
    for name, fam in PAPER["targets"].items():
        assert STAND_INS["targets"][name].get("kind") == fam.get("kind"), name
    assert STAND_INS["models"].keys() == PAPER["models"].keys()
    assert all("hf" not in m["source"] for m in STAND_INS["models"].values())


def test_stand_in_layouts():
    g = stand_in_tokenizer("gpt2")
    assert g.bos_token == g.eos_token == "<|endoftext|>"
    ll = stand_in_tokenizer("llama3")
    m = stand_in_model("llama3", ll)
    assert ll.bos_token == "<|begin_of_text|>" and not m.config.tie_word_embeddings
    reserved = ll.convert_tokens_to_ids(["<|reserved_special_token_0|>", "<|reserved_special_token_7|>"])
    assert not usable_mask(ll, len(ll))[reserved].any()
    f = stand_in_tokenizer("falcon")
    assert f.bos_token is None and type(stand_in_model("falcon", f)).__name__ == "FalconForCausalLM"
    q = stand_in_tokenizer("qwen2")
    qm = stand_in_model("qwen2", q)
    assert q.bos_token is None and qm.get_output_embeddings().weight.shape[0] > len(q)
    assert stand_in_tokenizer("qwen2-instruct").eos_token == "<|im_end|>"
    gt = stand_in_tokenizer("gemma3")
    gm = stand_in_model("gemma3", gt)
    assert gt.bos_token == "<bos>" and gt.convert_ids_to_tokens(gt(" house").input_ids)[-1].startswith("▁")
    assert float(gm.get_input_embeddings().embed_scale) == pytest.approx(32**0.5)
    assert not usable_mask(gt, len(gt))[gt.convert_tokens_to_ids(["<unused0>", "<unused5>"])].any()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("stand-ins")
    mp = pytest.MonkeyPatch()
    mp.setenv("DISTREACH_CACHE", str(root / "cache"))
    yield {arch: write_stand_in(arch, root / arch, seed=1) for arch in ("gpt2", "llama3", "qwen2", "falcon", "gemma3")}
    mp.undo()


@pytest.mark.parametrize("arch,bos", [("gpt2", "bos"), ("llama3", "bos"), ("qwen2", "none"), ("falcon", "none"), ("gemma3", "bos")])
def test_cli_tunes_every_prompt_kind_on_stand_in_folders(folders, tmp_path, capsys, arch, bos):
    model = str(folders[arch])
    target = tmp_path / "t.arrow"
    assert cli.main(["target", "outlier", "--model", model, "--entropy", "3", "--k", "2", "--out", str(target), "-q"]) == 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    t = read_arrow(target)
    p = np.exp(logprobs(t).astype(np.float64))
    assert (p[:, len(tok):] == 0).all()  # no mass on padding rows (qwen2's head is padded)
    ok = usable_mask(tok, p.shape[1])
    assert ok[np.argsort(p[0])[::-1][:2]].all()  # the outliers are usable tokens
    for method in ("soft", "hard", "hybrid"):
        out = tmp_path / f"{method}.arrow"
        argv = ["tune", "--model", model, "--target", str(target), "--method", method, "--inits", "2",
                "--max-steps", "3", "--out", str(out), "-q"]
        assert cli.main(argv) == 0, capsys.readouterr().err
        rows = read_arrow(out).to_pylist()
        assert {r["bos"] for r in rows} == {bos} and {r["bos_policy"] for r in rows} == {"auto"}
        assert {r["bos_token_id"] for r in rows} == {tok.bos_token_id}
        assert all(r["status"] == "ok" and np.isfinite(r["kl_min"]) for r in rows)
        for r in rows:
            assert ok[r["prompt_ids"]].all()
    if bos == "none":
        assert cli.main(["tune", "--model", model, "--target", str(target), "--bos", "bos", "--max-steps", "1", "-q"]) == 2
        assert "has no BOS token" in capsys.readouterr().err
    else:
        out = tmp_path / "nobos.arrow"
        assert cli.main(["tune", "--model", model, "--target", str(target), "--bos", "none", "--inits", "1",
                         "--max-steps", "2", "--out", str(out), "-q"]) == 0
        assert {r["bos"] for r in read_arrow(out).to_pylist()} == {"none"}


@pytest.mark.parametrize("arch", ["gpt2", "llama3", "qwen2", "falcon", "gemma3"])
@pytest.mark.parametrize("bos", ["auto", "none"])
def test_tuning_loss_equals_a_full_forward_of_the_prompt(folders, arch, bos):
    """The engine's loss (BOS keys and values computed once and reused, or no BOS) is the KL of a
    plain forward of BOS + the prompt's tokens, on every paper architecture."""
    from distreach import api
    from distreach.engine import TuneConfig, prompt_kl, tune

    lm = api.load_model(str(folders[arch]), dtype="fp32", device="cpu")
    t = api.make_target("vanilla", lm.vocab_size, entropy=4.0, n=3, tokenizer=lm.tokenizer)  # no mass on padding rows
    p = np.exp(logprobs(t).astype(np.float64))
    res = tune(lm, p, [11, 12, 13], TuneConfig(method="hard", prefix_len=4, max_steps=1, bos=bos))
    assert res.best_step.tolist() == [0, 0, 0]  # the loss of the init prompts
    full = prompt_kl(lm, p, res.best_ids.tolist(), bos=bos)
    np.testing.assert_allclose(res.kl_min, full, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama3", "qwen2", "falcon", "gemma3"])
@pytest.mark.parametrize("bos", ["auto", "none"])
def test_gcg_candidates_from_cached_positions_equal_whole_forward_passes(folders, arch, bos):
    """gcg scores a candidate from its prompt's keys and values of the positions before its first
    change: the same KL as a forward pass over the whole candidate, on every paper architecture."""
    from distreach import api

    from .test_gcg import scored_both_ways

    got, whole = scored_both_ways(api.load_model(str(folders[arch]), dtype="fp32", device="cpu"), bos)
    np.testing.assert_allclose(got.numpy(), whole.numpy(), rtol=1e-5, atol=1e-6)


def test_bos_required_on_a_model_without_one_fails_before_any_conversion(folders, tmp_path):
    import os
    import subprocess
    import sys

    from transformers import AutoConfig

    target = tmp_path / "t.npy"
    np.save(target, np.eye(1, AutoConfig.from_pretrained(folders["qwen2"]).vocab_size, 7)[0])  # all mass on token 7
    cache = tmp_path / "cache"
    env = {**os.environ, "DISTREACH_CACHE": str(cache), "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "distreach.cli", "tune", "--model", str(folders["qwen2"]), "--target", str(target),
                           "--bos", "bos"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "has no BOS token" in proc.stderr, proc.stderr
    assert not cache.exists()  # the model was not converted into the cache
