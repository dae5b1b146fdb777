import math

import numpy as np
import pytest
import torch
from scipy import optimize

from distreach.errors import DistreachError
from distreach.families import (
    OutlierSettings,
    lm_generated,
    lm_prompts,
    max_outlier_mass,
    migrate,
    migration_map,
    outlier_targets,
    pos_uniform_targets,
    shuffled,
)
from distreach.vocab import surface_forms, vocab_table


def probs(table):
    v = table.column("vocab_size")[0].as_py()
    return np.exp(table.column("logprobs").combine_chunks().flatten().to_numpy().reshape(table.num_rows, v).astype(np.float64))


@pytest.mark.parametrize("h,n", [(0.5, 100), (2.0, 500), (5.0, 49152), (0.01, 262144)])
def test_outlier_mass_solver_matches_a_direct_numerical_solve(h, n):
    def f(m):
        return -m * math.log(m) - (1 - m) * math.log((1 - m) / (n - 1)) - h

    direct = optimize.brentq(f, 1.0 / n + 1e-12, 1 - 1e-12, xtol=1e-14)
    assert max_outlier_mass(h, n) == pytest.approx(direct, abs=1e-9)


def test_outlier_targets_hold_their_mass_and_entropy():
    s = OutlierSettings(ks=(1, 3), per_level=2, seed=1)
    table = outlier_targets(300, [1.0, 3.0, 5.0], "nats", s)
    p = probs(table)
    assert table.num_rows == 3 * 2 * 2
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    for row, pr in zip(table.to_pylist(), p):
        m = math.floor(max_outlier_mass(row["requested_entropy"], 300) * 100) / 100
        assert row["outlier_mass"] >= m - s.delta - 1e-6
        assert abs(row["achieved_entropy"] - row["requested_entropy"]) <= s.tolerance + 1e-6
        assert row["kind"] == "outlier"
        h = -(pr * np.log(pr)).sum()
        assert h == pytest.approx(row["achieved_entropy"], abs=1e-3)
        # at moderate entropy the outliers stand out: the k most probable tokens hold the mass
        if row["requested_entropy"] <= 3.0:
            assert np.sort(pr)[::-1][: row["n_outliers"]].sum() == pytest.approx(row["outlier_mass"], rel=1e-3)
    assert outlier_targets(300, [1.0, 3.0, 5.0], "nats", s).equals(table)


def _outlier_alone(start, h_nats, tol, s):
    """Eq. 3's descent on one target by itself (as many iterations as it needs)."""
    import torch

    from distreach.infotheory import entropy

    _, outliers, z, m = start
    z = z.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=s.lr)
    for _ in range(s.max_iters):
        logp = torch.log_softmax(z, -1)
        ent, mass = entropy(logp), logp[outliers].exp().sum()
        if abs(ent.item() - h_nats) <= tol and mass.item() >= m - s.delta:
            return logp.detach().numpy(), ent.item(), mass.item()
        opt.zero_grad()
        (s.alpha * (ent - h_nats) ** 2 - s.beta * mass).backward()
        opt.step()
    raise AssertionError("not reached")


def test_outlier_targets_descend_together_as_each_would_alone():
    """Rows with as many outliers descend in one batch, each leaving it when it is done: every
    row is the target its own descent makes."""
    import torch

    from distreach.families import _fit_outliers, _outlier_start

    s = OutlierSettings(ks=(3,), per_level=1, seed=2)
    hs = [1.1, 2.7, 3.9, 4.9]  # rows done at different iterations; not exact in float32
    starts = [_outlier_start(f"t{i}", h, 3, 300, torch.arange(300), s) for i, h in enumerate(hs)]
    got, failed = _fit_outliers(starts, [0, 1, 2, 3], hs, 0.01, s)
    assert failed == []
    for start, h, (logp, ent, mass) in zip(starts, hs, got):
        want = _outlier_alone(start, h, 0.01, s)
        assert np.array_equal(logp, want[0]) and (ent, mass) == want[1:]


def test_unreachable_outlier_target_is_an_error_naming_it():
    with pytest.raises(DistreachError, match=r"target outlier-k1-L000-r0: .* not reached within 1 iterations"):
        outlier_targets(300, [2.0], "nats", OutlierSettings(ks=(1,), per_level=1, max_iters=1, alpha=0, beta=0))
    with pytest.raises(DistreachError, match="outside"):
        outlier_targets(300, [9.0], "nats", OutlierSettings(ks=(1,), per_level=1))


def test_lm_generated_and_shuffled(tiny_llama):
    lm = lm_generated(tiny_llama, n=3, prompt_len=4, unit="bits", seed=0)
    p = probs(lm)
    assert p.shape == (3, tiny_llama.vocab_size) and set(lm.column("kind").to_pylist()) == {"lm"}
    ent = -(p * np.log2(p)).sum(1)
    np.testing.assert_allclose(ent, lm.column("achieved_entropy").to_pylist(), rtol=1e-4)
    again = lm_generated(tiny_llama, n=3, prompt_len=4, unit="bits", seed=0)
    assert again.equals(lm)
    # the prompts lm_prompts names (benchmarks/gcg.py context types them back) are the ones the targets were made after
    from distreach.engine import prompt_kl

    prompts, seeds, bos_id = lm_prompts(tiny_llama, n=3, prompt_len=4, seed=0)
    assert bos_id == tiny_llama.tokenizer.bos_token_id and all(x[0] == bos_id and x.numel() == 5 for x in prompts)
    assert seeds == lm.column("seed").to_pylist()
    with torch.no_grad():
        np.testing.assert_allclose(prompt_kl(tiny_llama, p, [x[1:].tolist() for x in prompts]), 0, atol=1e-6)
        assert (prompt_kl(tiny_llama, p, [x[2:].tolist() for x in prompts]) > 1e-5).all()  # one token fewer: another q
    sh = shuffled(lm, copies=5, seed=0)
    q = probs(sh)
    assert sh.num_rows == 15
    for i in range(3):
        for c in range(5):
            np.testing.assert_allclose(np.sort(q[5 * i + c]), np.sort(p[i]), rtol=1e-5)
        assert not np.allclose(q[5 * i], p[i])
        assert len({q[5 * i + c].tobytes() for c in range(5)}) == 5  # five different permutations
    # each copy names the target it permutes
    ids = lm.column("target_id").to_pylist()
    assert sh.column("source_target_id").to_pylist() == [t for t in ids for _ in range(5)]


def test_prompts_longer_than_the_models_context_are_refused(tiny_llama):
    """The tiny Llama takes 64 positions: 63 random tokens after BOS fit, 64 do not (its rotary
    embeddings would compute them, past what the model was made for; a GPT-2 would fail in its
    position embedding)."""
    assert tiny_llama.context == 64
    assert lm_generated(tiny_llama, n=1, prompt_len=63, unit="bits").num_rows == 1
    with pytest.raises(DistreachError, match=r"^prompts of prompt_len 64 after BOS: 65 positions, more than model "
                                             r"tiny-llama's context of 64$"):
        lm_generated(tiny_llama, n=1, prompt_len=64, unit="bits")
    assert lm_generated(tiny_llama, n=1, prompt_len=64, unit="bits", bos="none").num_rows == 1


def test_matched_targets_name_the_target_whose_entropy_they_match(tiny_dirs, tiny_llama, tmp_path):
    from distreach.targetfamily import make_family
    from distreach.io import write_arrow

    lm = lm_generated(tiny_llama, n=3, prompt_len=4, unit="bits", seed=0)
    write_arrow(lm, tmp_path / "lm.arrow")
    settings = {"kind": "matched", "of": "lm", "grid": {"step": 0.05}}  # the schema fills in a grid
    matched = make_family(settings, tiny_dirs["llama"], "bits", base=tmp_path / "lm.arrow")
    assert matched.column("source_target_id").to_pylist() == lm.column("target_id").to_pylist()
    np.testing.assert_allclose(matched.column("achieved_entropy").to_pylist(), lm.column("achieved_entropy").to_pylist(),
                               atol=0.011)


def test_families_read_token_text_and_usable_tokens_from_the_vocabulary_tables(tiny_dirs, tmp_path, monkeypatch):
    """Outlier, POS-uniform, migrated and LM-generated targets made from the models' vocabulary
    files (as the workflow makes them, without loading a tokenizer; LM-generated ones take the BOS
    token from the model's manifest) equal those made from the tokenizers; a vocabulary file of
    another model is one clear error."""
    import polars as pl

    from distreach.io import read_arrow, write_arrow
    from distreach.models import load_materialised, write_vocab
    from distreach.targetfamily import make_family

    import transformers

    from distreach.tokens import usable_ids, usable_mask
    from distreach.vocab import token_bytes

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("a tokenizer was loaded")

    def made_from_files(case):
        return make_family(case[0], tiny_dirs["llama"], "bits", **case[1], vocab_file=vocab["llama"],
                           source_vocab_file=vocab["gpt2"])

    vocab = {arch: tmp_path / f"vocab-{arch}.arrow" for arch in tiny_dirs}
    for arch, path in vocab.items():
        write_vocab(tiny_dirs[arch], path)
    gpt2 = load_materialised(tiny_dirs["gpt2"], dtype="fp32", device="cpu")[0]
    write_arrow(lm_generated(gpt2, n=3, prompt_len=4, unit="bits", seed=0), tmp_path / "lm-gpt2.arrow")
    words = pl.from_arrow(read_arrow(vocab["llama"]))
    pos = words.select("token_id", pos=pl.lit("NOUN"), kept=pl.col("token_id") % 3 > 0)  # every third id not kept
    pos.write_ipc(tmp_path / "pos.arrow")
    cases = [
        ({"kind": "outlier", "grid": {"start": 1, "step": 1.0, "stop": 2}, "ks": [1, 2], "per_level": 1}, {}),
        ({"kind": "pos", "tags": ["NOUN"], "n_tokens": 20, "draws": 3, "grid": {"step": 1.0}},  # the schema
         {"base": tmp_path / "pos.arrow"}),                                                     # fills in a grid
        ({"kind": "migrated", "of": "lm", "source": "tiny-gpt2", "grid": {"step": 1.0}},
         {"base": tmp_path / "lm-gpt2.arrow", "source_dir": tiny_dirs["gpt2"]}),
        ({"kind": "lm", "n": 4, "prompt_len": 3}, {}),
    ]
    for settings, inputs in cases:
        from_tokenizers = make_family(settings, tiny_dirs["llama"], "bits", **inputs)
        with monkeypatch.context() as m:  # from the files, no tokenizer is loaded
            m.setattr(transformers.AutoTokenizer, "from_pretrained", no_tokenizer)
            from_files = make_family(settings, tiny_dirs["llama"], "bits", **inputs, vocab_file=vocab["llama"],
                                     source_vocab_file=vocab["gpt2"])
        assert from_files.num_rows > 0 and from_files.equals(from_tokenizers), settings["kind"]
    # ... and those the families make from the tokenizers themselves (usable ids, surface text)
    tok, n = load_materialised(tiny_dirs["llama"], with_model=False)[1], words.height
    support = min(len(tok), n)
    outlier = outlier_targets(support, [1.0, 2.0], "bits", OutlierSettings(ks=(1, 2), per_level=1), usable_ids(tok, support))
    assert made_from_files(cases[0]).select(outlier.column_names).equals(outlier)
    pos_direct = pos_uniform_targets(pos, n, ["NOUN"], 20, 3, "bits", 0, usable=usable_mask(tok, n))
    assert made_from_files(cases[1]).equals(pos_direct)

    def text(b):
        try:
            return b.decode("utf-8")
        except (AttributeError, UnicodeDecodeError):  # None (special, padding) or not whole UTF-8
            return None

    def forms(tokenizer, size):  # surface text of whole-text tokens, from the tokenizer
        _, raw, _, fallback = token_bytes(tokenizer, size)
        return [None if f else text(b) for b, f in zip(raw, fallback)]

    src_ids, dst_ids = migration_map(forms(gpt2.tokenizer, gpt2.vocab_size), forms(tok, n))
    migrated = migrate(read_arrow(tmp_path / "lm-gpt2.arrow"), src_ids, dst_ids, n, "tiny-gpt2")
    assert made_from_files(cases[2]).equals(migrated)
    # the source's surface text is read from the source's file: other text there, other targets
    other = pl.from_arrow(read_arrow(vocab["gpt2"])).with_columns(pl.col("surface").reverse())
    write_arrow(other.to_arrow(), tmp_path / "other.arrow", {"model": "tiny-gpt2"})
    assert not make_family(cases[2][0], tiny_dirs["llama"], "bits", **cases[2][1], vocab_file=vocab["llama"],
                           source_vocab_file=tmp_path / "other.arrow").equals(migrated)
    lm = made_from_files(cases[3])
    assert set(lm.column("lm_bos").to_pylist()) == {"bos"}  # the BOS token the manifest names went first
    usable = words["is_usable"].to_numpy()
    assert not usable.all() and usable.sum() > 20  # the tiny tokenizers' special tokens are not usable
    with pytest.raises(DistreachError, match=r"usable: 5 entries, model tiny-llama has \d+ output rows"):
        lm_generated(load_materialised(tiny_dirs["llama"], with_tokenizer=False)[0], 2, 3, "bits", usable=usable[:5])
    pos_targets = make_family(cases[1][0], tiny_dirs["llama"], "bits", **cases[1][1], vocab_file=vocab["llama"])
    drawn = np.concatenate(pos_targets.column("support_ids").to_pylist())
    assert pos_targets.num_rows == 3 and usable[drawn].all() and (drawn % 3 > 0).all()
    with pytest.raises(DistreachError, match=r"vocab-gpt2.arrow: not the vocabulary table of model tiny-llama \(.*\): it is model tiny-gpt2's$"):
        make_family(cases[0][0], tiny_dirs["llama"], "bits", vocab_file=vocab["gpt2"])
    write_arrow(read_arrow(vocab["llama"]).drop_columns(["is_usable"]), tmp_path / "old.arrow", {"model": "tiny-llama"})
    with pytest.raises(DistreachError, match=r"old.arrow: not the vocabulary table .*: missing is_usable \(an older distreach's table: delete it and run again\)$"):
        make_family(cases[0][0], tiny_dirs["llama"], "bits", vocab_file=tmp_path / "old.arrow")
    write_arrow(read_arrow(vocab["llama"]).slice(1), tmp_path / "short.arrow", {"model": "tiny-llama"})
    with pytest.raises(DistreachError, match=rf"short.arrow: not the vocabulary table .*: {n - 1} rows, the model has {n}$"):
        make_family(cases[0][0], tiny_dirs["llama"], "bits", vocab_file=tmp_path / "short.arrow")
    write_arrow(read_arrow(vocab["llama"]).replace_schema_metadata(None), tmp_path / "anonymous.arrow")
    with pytest.raises(DistreachError, match=r"anonymous.arrow: not the vocabulary table .*: it names no model$"):
        make_family(cases[0][0], tiny_dirs["llama"], "bits", vocab_file=tmp_path / "anonymous.arrow")


class Tok:
    """A tokenizer with known pieces."""

    def __init__(self, pieces, special=()):
        self.pieces, self.all_special_ids = pieces, list(special)

    def __len__(self):
        return len(self.pieces)

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]


def test_vocabulary_table_marks_placeholders_special_tokens_and_padding_unusable():
    table = vocab_table(Tok(["<s>", "a", "<unused0>", "b", "<extra_id_3>"], special=[0]), 7)
    assert table["is_usable"].to_list() == [False, True, False, True, False, False, False]


def test_migration_through_shared_surface_strings():
    byte_level = Tok(["<|endoftext|>", "Ġthe", "the", "Ġcat", "é", "Ã©", "xyz"], special=[0])
    sentencepiece = Tok(["<bos>", "▁the", "▁dog", "the", "é", "<0x41>", "▁cat"], special=[0])
    src = surface_forms(vocab_table(byte_level, 7))
    dst = surface_forms(vocab_table(sentencepiece, 7))
    assert src[:4] == [None, " the", "the", " cat"] and src[5] == "é" and src[4] is None
    assert dst[:4] == [None, " the", " dog", "the"] and dst[5] is None
    s, d = migration_map(src, dst)
    assert dict(zip(s.tolist(), d.tolist())) == {1: 1, 2: 3, 3: 6, 5: 4}
    from distreach.targets import targets_table

    p = np.array([[0.0, 0.4, 0.1, 0.2, 0.05, 0.05, 0.2]])
    with np.errstate(divide="ignore"):
        t = targets_table(["a"], "lm", [1.0], [1.0], "nats", [0], np.log(p).astype(np.float32))
    m = migrate(t, s, d, 7, "src")
    q = probs(m)[0]
    np.testing.assert_allclose(q.sum(), 1, atol=1e-6)
    np.testing.assert_allclose(q[[1, 3, 6, 4]], np.array([0.4, 0.1, 0.2, 0.05]) / 0.75, rtol=1e-5)
    assert m.column("kept_mass")[0].as_py() == pytest.approx(0.75)
    assert q[[0, 2, 5]].sum() == 0
