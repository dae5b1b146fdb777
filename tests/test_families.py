import numpy as np
import pytest

from distreach.families import lm_generated, migrate, migration_map, shuffled, surface_forms


def probs(table):
    v = table.column("vocab_size")[0].as_py()
    return np.exp(table.column("logprobs").combine_chunks().flatten().to_numpy().reshape(table.num_rows, v).astype(np.float64))


def test_lm_generated_and_shuffled(tiny_llama):
    lm = lm_generated(tiny_llama, n=3, prompt_len=4, unit="bits", seed=0)
    p = probs(lm)
    assert p.shape == (3, tiny_llama.vocab_size) and set(lm.column("kind").to_pylist()) == {"lm"}
    ent = -(p * np.log2(p)).sum(1)
    np.testing.assert_allclose(ent, lm.column("achieved_entropy").to_pylist(), rtol=1e-4)
    again = lm_generated(tiny_llama, n=3, prompt_len=4, unit="bits", seed=0)
    assert again.equals(lm)
    sh = shuffled(lm, copies=5, seed=0)
    q = probs(sh)
    assert sh.num_rows == 15
    for i in range(3):
        for c in range(5):
            np.testing.assert_allclose(np.sort(q[5 * i + c]), np.sort(p[i]), rtol=1e-5)
        assert not np.allclose(q[5 * i], p[i])


class Tok:
    """A tokenizer with known pieces."""

    def __init__(self, pieces, special=()):
        self.pieces, self.all_special_ids = pieces, list(special)

    def __len__(self):
        return len(self.pieces)

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]


def test_migration_through_shared_surface_strings():
    byte_level = Tok(["<|endoftext|>", "Ġthe", "the", "Ġcat", "é", "Ã©", "xyz"], special=[0])
    sentencepiece = Tok(["<bos>", "▁the", "▁dog", "the", "é", "<0x41>", "▁cat"], special=[0])
    src = surface_forms(byte_level, 7)
    dst = surface_forms(sentencepiece, 7)
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
