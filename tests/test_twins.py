"""Tiny twins of the paper's models (distreach.twins) and configs/paper-twins.yaml: every paper
architecture has a twin with its class and special-token layout, the twins config is the paper
study, and the CLI tunes on twin folders of every architecture with each row's BOS recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from distreach import cli
from distreach.io import read_arrow
from distreach.targets import logprobs
from distreach.tokens import usable_mask
from distreach.paper_twins import twins_config
from distreach.twins import ARCHITECTURES, twin_model, twin_tokenizer, write_twin

REPO = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
TWINS = yaml.safe_load((REPO / "configs/paper-twins.yaml").read_text())

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


def test_every_paper_model_has_a_twin_of_its_class():
    hub = {name: e["source"]["hf"] for name, e in PAPER["models"].items() if "hf" in e["source"]}
    assert hub, "the paper config names no hub model"
    for name, hub_id in hub.items():
        assert TWINS["models"][name]["source"] == {"local": f"results/twins/{name}"}, name
        arch = TWINS["twins"][name]["arch"]
        assert ARCHITECTURES[arch] == hub_class(hub_id), (name, arch)
        assert arch.endswith("-instruct") == ("instruct" in hub_id.lower()), (name, arch)
    # two models of one architecture are different twins
    seeds = [(t["arch"], t["seed"]) for t in TWINS["twins"].values()]
    assert len(set(seeds)) == len(seeds)


def test_twins_config_is_the_paper_study():
    assert twins_config(PAPER) == TWINS, "configs/paper-twins.yaml is stale: run python scripts/paper_twins.py"
    assert TWINS["figures"] == PAPER["figures"]
    assert TWINS["experiments"].keys() == PAPER["experiments"].keys()
    for name, exp in PAPER["experiments"].items():
        twin = TWINS["experiments"][name]
        for key in set(exp) - {"inits", "shards"}:
            assert twin[key] == exp[key], (name, key)
    assert TWINS["targets"].keys() == PAPER["targets"].keys()
    for name, fam in PAPER["targets"].items():
        assert TWINS["targets"][name].get("kind") == fam.get("kind"), name
    assert TWINS["models"].keys() == PAPER["models"].keys()
    assert all("hf" not in m["source"] for m in TWINS["models"].values())


def test_twin_layouts():
    g = twin_tokenizer("gpt2")
    assert g.bos_token == g.eos_token == "<|endoftext|>"
    ll = twin_tokenizer("llama3")
    m = twin_model("llama3", ll)
    assert ll.bos_token == "<|begin_of_text|>" and not m.config.tie_word_embeddings
    reserved = ll.convert_tokens_to_ids(["<|reserved_special_token_0|>", "<|reserved_special_token_7|>"])
    assert not usable_mask(ll, len(ll))[reserved].any()
    f = twin_tokenizer("falcon")
    assert f.bos_token is None and type(twin_model("falcon", f)).__name__ == "FalconForCausalLM"
    q = twin_tokenizer("qwen2")
    qm = twin_model("qwen2", q)
    assert q.bos_token is None and qm.get_output_embeddings().weight.shape[0] > len(q)
    assert twin_tokenizer("qwen2-instruct").eos_token == "<|im_end|>"
    gt = twin_tokenizer("gemma3")
    gm = twin_model("gemma3", gt)
    assert gt.bos_token == "<bos>" and gt.convert_ids_to_tokens(gt(" house").input_ids)[-1].startswith("▁")
    assert float(gm.get_input_embeddings().embed_scale) == pytest.approx(32**0.5)
    assert not usable_mask(gt, len(gt))[gt.convert_tokens_to_ids(["<unused0>", "<unused5>"])].any()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    mp = pytest.MonkeyPatch()
    mp.setenv("DISTREACH_CACHE", str(root / "cache"))
    yield {arch: write_twin(arch, root / arch, seed=1) for arch in ("gpt2", "llama3", "qwen2", "falcon", "gemma3")}
    mp.undo()


@pytest.mark.parametrize("arch,bos", [("gpt2", "bos"), ("llama3", "bos"), ("qwen2", "none"), ("falcon", "none"), ("gemma3", "bos")])
def test_cli_tunes_every_prompt_kind_on_twin_folders(folders, tmp_path, capsys, arch, bos):
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
