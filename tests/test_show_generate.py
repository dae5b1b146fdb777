"""``distreach show`` and ``distreach generate`` (and their api functions) on a result of ``tune``:
target against achieved per row, the kept prompt fed back to the model it was tuned on, and the
model found where ``tune`` put it, only with the weights the row was tuned on."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import polars as pl
import pytest

from distreach import api, cli
from distreach.errors import DistreachError
from distreach.io import read_arrow, write_arrow

from .conftest import run_cli, tiny_cli_home


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny model folder, the model cache, and three results of ``distreach tune``."""
    root = tmp_path_factory.mktemp("show")
    with tiny_cli_home(root) as model:
        target = root / "t.json"
        target.write_text(json.dumps({"table": 0.5, "river": 0.3, "Paris": 0.2}))
        out = {"root": root, "model": str(model)}
        for method in ("soft", "hybrid", "hard"):
            out[method] = str(root / f"{method}.arrow")
            assert cli.main(["tune", "--model", str(model), "--target", str(target), "--method", method, "--inits", "2",
                             "--max-steps", "30", "--out", out[method], "-q"]) == 0
        yield out


run = run_cli


def test_show_prints_target_beside_achieved_for_each_row(env, capsys):
    code, out, err = run(capsys, "show", env["hybrid"])
    assert code == 0, err
    df = pl.read_ipc(env["hybrid"])
    blocks = out.strip().split("\n\n")
    assert len(blocks) == df.height == 2
    assert "step cap" in df["stop_reason"]  # a row that ran all its steps says so
    for block, r in zip(blocks, df.iter_rows(named=True)):
        lines = block.splitlines()
        assert lines[0] == (f"t (init {r['init_index']}; tiny, hybrid, experiment cli): KL {r['kl_min']:.4g} bits; "
                            f"entropy target {r['target_entropy_achieved']:.4g}, achieved {r['q_entropy']:.4g} bits; "
                            "BOS token 1 (policy auto)"
                            + (f"; stopped at the step limit ({r['steps']} steps: --max-steps, or tuning.max_steps in a config): more may lower its KL" if r["stop_reason"] == "step cap" else ""))
        assert lines[1] == f"  prompt: {r['prompt_text']!r}"
        # one line per rank: the target's tokens with p and q, then q's own tokens with q
        table = [line.split() for line in lines[3:]]
        assert len(table) == len(r["q_top_ids"]) == 20
        assert [t[1] for t in table[:3]] == ['"table"', '"river"', '"Paris"']
        assert [float(t[2]) for t in table[:3]] == [0.5, 0.3, 0.2]
        assert [float(t[3]) for t in table[:3]] == pytest.approx(r["q_on_p_top"], abs=5e-5)
        assert [float(t[-1]) for t in table] == pytest.approx(r["q_top_probs"], abs=5e-5)


def test_show_says_what_a_hard_prompts_text_gives_typed_back_in(env, capsys):
    code, out, err = run(capsys, "show", env["hard"], "--init", "0")
    assert code == 0, err
    r = pl.read_ipc(env["hard"]).filter(pl.col("init_index") == 0).row(0, named=True)
    assert out.splitlines()[1] == f"  prompt: {r['prompt_text']!r} (its text typed back in gives {r['kl_roundtrip']:.4g} bits)"


def test_show_filters_rows_and_names_what_is_there(env, capsys):
    code, out, _ = run(capsys, "show", env["soft"], "--init", "1", "--target", "t")
    assert code == 0 and out.startswith("t (init 1; tiny, soft, experiment cli)") and "\n\n" not in out
    code, out, _ = run(capsys, "show", env["soft"], "--init", "1", "--top", "3")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["rank", "1", "2", "3"]
    code, out, err = run(capsys, "show", env["soft"], "--target", "nosuch")
    assert code == 2 and out == ""
    assert err == f"distreach: error: --target nosuch: {env['soft']} has no such row (target_id: t)\n"


def test_show_reads_the_tokenizer_only(env, capsys, monkeypatch):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("show loaded weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    code, out, err = run(capsys, "show", env["soft"], "--init", "0")
    assert code == 0, err


def test_generate_feeds_the_kept_prompt_back(env, capsys):
    df = pl.read_ipc(env["soft"])
    best = df.sort("kl_min").row(0, named=True)
    got = api.generate(env["soft"], "t", samples=3, max_new_tokens=4, seed=1, top=20)
    # the best init by default; the next-token distribution the row recorded at its best step
    assert got["row"]["init_index"] == best["init_index"]
    assert got["next_tokens"]["token_id"].to_list() == best["q_top_ids"]
    np.testing.assert_allclose(got["next_tokens"]["q"], best["q_top_probs"], rtol=1e-4)
    np.testing.assert_allclose(got["q_on_p_top"], best["q_on_p_top"], rtol=1e-4)
    assert dict(zip(got["next_tokens"]["token"], got["next_tokens"]["p"]))["table"] == 0.5
    assert len(got["samples"]) == 3 and all(1 <= len(s.split()) <= 4 for s in got["samples"])
    again = api.generate(env["soft"], "t", samples=3, max_new_tokens=4, seed=1)
    other = api.generate(env["soft"], "t", samples=3, max_new_tokens=4, seed=2)
    assert again["samples"] == got["samples"] != other["samples"]
    # a text after the prompt changes the next-token distribution
    after = api.generate(env["soft"], "t", init=best["init_index"], text="the house", samples=0)
    assert after["next_tokens"]["q"].to_list() != got["next_tokens"]["q"].to_list()[:10] and after["samples"] == []
    # a text up to the model's context (the tiny Llama's 64 positions) after BOS and the prompt; samples past it refused
    n = 64 - (best["bos_token_id"] is not None) - best["prefix_len"]
    assert api.generate(env["soft"], "t", text=" the" * n, samples=0)["samples"] == []
    with pytest.raises(DistreachError, match=r"^the prompt and --text and the samples' tokens: 65 positions, more than "
                                             r"model \S+'s context of 64$"):
        api.generate(env["soft"], "t", text=" the" * n, samples=1, max_new_tokens=2)


def test_generate_prints_next_tokens_and_samples(env, capsys):
    code, out, err = run(capsys, "generate", env["hybrid"], "--target", "t", "--init", "0", "--samples", "2",
                         "--max-new-tokens", "3", "--top", "4")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("t (init 0; tiny, hybrid, experiment cli), KL ") and "hybrid prompt '<soft><soft>" in lines[0]
    assert lines[1].startswith("KL(p || q) of this pass: ")  # the target's 3 tokens are all recorded
    assert lines[2].startswith("next token") and len(lines) == 3 + 5 + 1 + 2
    assert lines[-3].startswith("samples (seed 0, up to 3 new tokens") and lines[-1].startswith("  2: ")


def test_generate_uses_only_the_weights_the_row_was_tuned_on(env, capsys, tmp_path):
    table = read_arrow(env["soft"])
    i = table.column_names.index("model_sha256")
    other = table.set_column(i, "model_sha256", [["0" * 64] * table.num_rows])
    write_arrow(other, tmp_path / "other.arrow")
    code, out, err = run(capsys, "generate", str(tmp_path / "other.arrow"), "--target", "t")
    assert code == 2 and "holds other weights (sha256 " in err and err.count("\n") == 1
    j = table.column_names.index("model_source")
    random = table.set_column(j, "model_source", [[json.dumps({"random_init": "base", "seed": 0})] * table.num_rows])
    write_arrow(random.set_column(i, "model_sha256", [["0" * 64] * table.num_rows]), tmp_path / "random.arrow")
    code, out, err = run(capsys, "generate", str(tmp_path / "random.arrow"), "--target", "t")
    assert code == 2 and "no materialised folder with the weights the row was tuned on" in err


def test_a_table_without_kept_prompts_is_refused(env, capsys, tmp_path):
    table = read_arrow(env["soft"])
    write_arrow(table.drop_columns(["soft_prompt", "q_top_ids"]), tmp_path / "old.arrow")
    for command in (["show"], ["generate", "--target", "t"]):
        code, out, err = run(capsys, command[0], str(tmp_path / "old.arrow"), *command[1:])
        assert code == 2 and err == (f"distreach: error: {tmp_path / 'old.arrow'}: not a result table of this version of "
                                     "distreach (no column(s) q_top_ids, soft_prompt); tune it again\n")


def test_show_of_a_target_table_or_a_row_without_top_tokens_says_so(env, capsys, tmp_path):
    target = tmp_path / "target.arrow"
    assert cli.main(["target", "vanilla", "--model", env["model"], "--entropy", "2", "--out", str(target)]) == 0
    capsys.readouterr()
    code, out, err = run(capsys, "show", str(target))
    assert code == 2 and err == (f"distreach: error: {target}: a target table, not a result table; tune it first "
                                 f"(distreach tune --model M --target {target} --out result.arrow)\n")
    result = tmp_path / "k0.arrow"
    code, _, err = run(capsys, "tune", "--model", env["model"], "--target", str(target), "--inits", "1", "--max-steps", "2",
                       "--top-k", "0", "--out", str(result), "-q")
    assert code == 0, err
    code, out, err = run(capsys, "show", str(result))
    assert code == 0 and out.splitlines()[1:] == [
        "  no top tokens recorded (tuned with --top-k 0, or tuning.top_k 0 in a config)"]


def test_the_workflow_model_folder_is_found_beside_its_results(env, tmp_path):
    row = pl.read_ipc(env["soft"]).row(0, named=True)
    results = tmp_path / "results"
    folders = api.model_folders(row, results / "collected" / "a.arrow")
    assert folders[0] == (results / "models" / "tiny").resolve() and folders[-1].parent == api.cache_dir().resolve()


def test_generate_computes_the_kept_prompts_kl_anew_where_the_record_holds_all_of_p(env, capsys):
    best = pl.read_ipc(env["soft"]).sort("kl_min").row(0, named=True)
    got = api.generate(env["soft"], "t", samples=0)
    # fp32, the same prompt: the new pass gives the KL the tuning recorded at its best step
    assert got["kl"] == pytest.approx(best["kl_min"], rel=1e-3, abs=2e-6)
    code, out, err = run(capsys, "generate", env["soft"], "--target", "t", "--samples", "0")
    assert code == 0 and out.splitlines()[1] == f"KL(p || q) of this pass: {got['kl']:.4g} bits", err
    # with a text after the prompt: another distribution, another KL
    assert api.generate(env["soft"], "t", samples=0, text=" the")["kl"] != pytest.approx(got["kl"], rel=1e-3, abs=2e-6)
    # a target whose recorded top tokens miss some of its mass: no KL, and a line saying why
    wide = read_arrow(env["soft"])
    probs = wide.column("p_top_probs").to_pylist()
    cut = wide.set_column(wide.schema.get_field_index("p_top_probs"), "p_top_probs",
                          pa.array([[v * 0.99 for v in row] for row in probs], type=wide.schema.field("p_top_probs").type))
    path = env["root"] / "cut.arrow"
    write_arrow(cut, path)
    assert api.generate(str(path), "t", samples=0)["kl"] is None
    code, out, _ = run(capsys, "generate", str(path), "--target", "t", "--samples", "0")
    kept = len(probs[0]), 1 - sum(v * 0.99 for v in probs[0])
    assert kept[0] > 1 and code == 0 and out.splitlines()[1] == (
        f"KL(p || q) of this pass: not known (the table keeps the target's {kept[0]} most probable tokens, all but "
        f"{kept[1]:.2g} of its mass: --top-k, or tuning.top_k in a config)")
    # a row tuned with top_k 0 records no tokens: no KL either
    none = wide
    for name in ("p_top_ids", "p_top_probs"):
        none = none.set_column(none.schema.get_field_index(name), name, pa.array([[]] * none.num_rows, type=none.schema.field(name).type))
    write_arrow(none, path)
    assert api.generate(str(path), "t", samples=0)["kl"] is None
    code, out, _ = run(capsys, "generate", str(path), "--target", "t", "--samples", "0")
    assert code == 0 and out.splitlines()[1] == ("KL(p || q) of this pass: not known (no top tokens recorded (tuned with "
                                                 "--top-k 0, or tuning.top_k 0 in a config))")


def test_score_gives_a_tuned_prompts_text_its_typed_back_kl(env, capsys):
    """The text of a hard prompt, scored as a prompt, gives what the tuning recorded it gives typed
    back in (``kl_roundtrip``): the same BOS token, tokens and forward pass."""
    rows = pl.read_ipc(env["hard"]).sort("init_index")
    texts = rows["prompt_text"].to_list()
    loaded = api.load_model(env["model"], dtype=rows["dtype"][0], device="cpu")  # the dtype the rows were tuned in
    target = api.read_target(env["root"] / "t.json", loaded)
    got = api.score_texts(loaded, target, texts)
    assert got["target_id"].to_list() == ["t", "t"] and got["text"].to_list() == texts and got["model"].to_list() == ["tiny"] * 2
    np.testing.assert_allclose(got["kl"], rows["kl_roundtrip"], rtol=1e-4)
    assert got["bos_token_id"].to_list() == rows["bos_token_id"].to_list() == [1, 1]
    code, out, err = run(capsys, "score", "--model", env["model"], "--target", str(env["root"] / "t.json"),
                         "--text", texts[0], "--top", "4")
    assert code == 0, err
    r = got.row(0, named=True)
    lines = out.splitlines()
    assert lines[0] == (f"t, text {json.dumps(texts[0], ensure_ascii=False)} ({len(r['prompt_ids'])} tokens, after BOS "
                        f"token 1): KL {r['kl']:.4g} bits; entropy target {r['target_entropy_achieved']:.4g}, achieved "
                        f"{r['q_entropy']:.4g} bits")
    table = [line.split() for line in lines[2:]]
    assert len(table) == 4 and [t[1] for t in table[:3]] == ['"table"', '"river"', '"Paris"']
    assert [float(t[3]) for t in table[:3]] == pytest.approx(r["q_on_p_top"][:3], abs=5e-5)
    assert [float(t[-1]) for t in table] == pytest.approx(r["q_top_probs"][:4], abs=5e-5)


def test_score_of_several_targets_and_texts_is_each_pair_in_its_targets_unit(env, tmp_path):
    from distreach.engine import prompt_kl

    loaded = api.load_model(env["model"], dtype="fp32", device="cpu")
    probs = np.random.default_rng(3).dirichlet(np.ones(loaded.vocab_size), 2).astype(np.float32)
    np.save(tmp_path / "two.npy", probs)
    target = api.read_target(tmp_path / "two.npy", loaded, "nats")
    texts = ["table river", "", "Paris"]
    got = api.score_texts(loaded, target, texts, bos="auto", top_k=3)
    assert got.height == 6 and got["text"].to_list() == texts * 2  # targets first, then texts
    ids = [loaded.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    expected = prompt_kl(loaded, probs[[0, 0, 0, 1, 1, 1]], ids * 2, bos="auto")  # nats
    np.testing.assert_allclose(got["kl"], expected, rtol=1e-5)
    assert got["entropy_unit"].unique().to_list() == ["nats"] and all(len(r) == 3 for r in got["q_top_ids"])
    plain = api.score_texts(loaded, target, ["table river"], bos="none")
    np.testing.assert_allclose(plain["kl"], prompt_kl(loaded, probs, [ids[0]] * 2, bos="none"), rtol=1e-5)
    assert plain["bos_token_id"].to_list() == [None, None] and plain["kl"][0] != pytest.approx(got["kl"][0], rel=1e-3)
    with pytest.raises(DistreachError, match=r"^text '': no tokens, and no BOS token before it \(bos policy none\)"):
        api.score_texts(loaded, target, texts, bos="none")
    with pytest.raises(DistreachError, match="^no text to score$"):
        api.score_texts(loaded, target, [])


@pytest.mark.parametrize("dtype,hint", [("fp32", "float32); "), ("bf16", "bfloat16: --dtype fp32 may help); ")])
def test_score_says_why_a_kl_is_not_a_number(env, capsys, monkeypatch, dtype, hint):
    """A model whose output after a text is not finite gives a KL that is NaN: score prints why
    (and the dtype it ran in) where the number would be."""
    import torch

    import distreach.prompts

    real = distreach.prompts.next_token_logprobs
    monkeypatch.setattr(distreach.prompts, "next_token_logprobs",
                        lambda *a, **k: torch.full_like(real(*a, **k), float("nan")))
    code, out, err = run(capsys, "score", "--model", env["model"], "--target", str(env["root"] / "t.json"),
                         "--text", "river", "--dtype", dtype)
    assert code == 0, err
    assert f"): KL not a number (the model's next-token distribution after this text is not finite in {hint}" in out, out


def test_generate_says_a_rows_source_folder_is_gone(tmp_path, capsys):
    """A row tuned on a model folder whose folder and cache entry are gone: generate says the
    source folder is gone and where it looked, not to run the workflow."""
    import shutil

    with tiny_cli_home(tmp_path) as model:
        (tmp_path / "t.json").write_text(json.dumps({"table": 0.5, "river": 0.5}))
        assert cli.main(["tune", "--model", str(model), "--target", str(tmp_path / "t.json"), "--inits", "1",
                         "--max-steps", "2", "--out", str(tmp_path / "r.arrow"), "-q"]) == 0
        shutil.rmtree(model)
        shutil.rmtree(tmp_path / "cache")
        code, out, err = run(capsys, "generate", str(tmp_path / "r.arrow"), "--target", "t", "--samples", "0")
    assert code == 2
    assert f"; its source folder {model} is gone: put it back, or the row's model folder in one of these" in err, err
    assert f"{tmp_path / 'cache' / 'models'}/tiny-" in err  # the cache is among the places looked at
    assert "materialise_model" not in err
