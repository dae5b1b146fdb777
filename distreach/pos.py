"""Parts of speech of a vocabulary's English tokens (paper App. C).

Each English token (see :func:`distreach.vocab.vocab_table`) is tagged as a one-word spaCy
``Doc`` without a trailing space. Only the components tagging needs run (tok2vec, tagger or
morphologizer, attribute ruler), in batches. A token is kept when spaCy's tokenizer reads its
word as one token and its POS is unambiguous: the tagger's probabilities of the fine tags that
map to the chosen POS sum to at least ``min_pos_prob``.

spaCy is imported only here, and scispacy only for scispacy taggers (``en_core_sci_*``,
``en_ner_*``), so the rest of distreach runs without them.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .errors import DistreachError
from .schema import default

TAGGER, MIN_POS_PROB, BATCH_SIZE = (default(f"pos.{key}") for key in ("tagger", "min_pos_prob", "batch_size"))
TAG_COMPONENTS = ("tok2vec", "tagger", "morphologizer", "attribute_ruler")
POS_COLUMNS = ["token_id", "word", "leading_space", "pos", "tag", "pos_prob", "single_token", "kept"]


def is_scispacy(name: str) -> bool:
    return name.startswith(("en_core_sci_", "en_ner_"))


def _numpy_products():
    """Where thinc's CPU ops are its numpy ones (not Apple's or another platform's), a context in
    which the models made use numpy's matrix products (its BLAS) instead of BLIS: the same tags
    (tested), faster here (benchmarks/README.md, POS tagging of whole vocabularies)."""
    import contextlib

    from thinc.api import NumpyOps, get_current_ops, use_ops

    return use_ops("numpy", use_blis=False) if type(get_current_ops()) is NumpyOps else contextlib.nullcontext()


def load_tagger(name: str):
    """The spaCy pipeline ``name`` with only the components tagging needs."""
    try:
        import spacy
    except ImportError:
        raise DistreachError("POS tagging needs spaCy: install the POS environment (envs/pos.yaml)") from None
    if is_scispacy(name):
        try:
            import scispacy  # noqa: F401  (registers scispacy's components)
        except ImportError:
            raise DistreachError(f"tagger {name} is a scispacy model: install scispacy (envs/pos.yaml)") from None
    try:
        with _numpy_products():
            nlp = spacy.load(name)
    except OSError:
        raise DistreachError(
            f"tagger {name!r} is not installed (a spaCy pipeline package; see envs/pos.yaml)"
        ) from None
    keep = [n for n in nlp.pipe_names if n in TAG_COMPONENTS]
    if "tagger" not in keep and "morphologizer" not in keep:
        raise DistreachError(f"tagger {name!r} has no tagger or morphologizer component")
    for n in [n for n in nlp.pipe_names if n not in keep]:
        nlp.remove_pipe(n)
    return nlp


def _by_label(nlp, component, probe: str) -> dict[str, tuple[str, str]]:
    """(POS, fine tag) of the one-word Doc ``probe`` tagged with each label, after the
    attribute ruler (a morphologizer's label names its POS where no ruler sets one)."""
    from spacy.tokens import Doc

    out = {}
    for label in component.labels:
        doc = Doc(nlp.vocab, words=[probe], spaces=[False])
        doc[0].tag_ = label
        if "attribute_ruler" in nlp.pipe_names:
            doc = nlp.get_pipe("attribute_ruler")(doc)
        out[label] = (doc[0].pos_ or label.split("|")[0].removeprefix("POS="), doc[0].tag_)
    return out


# token attributes of attribute-ruler patterns that tagging sets (the same for a word and the probe
# given its tag), and IS_SPACE (a whitespace word always goes through the ruler)
_ANNOTATIONS = {"TAG", "DEP", "POS", "MORPH", "IS_SPACE"}


def _ruler_reads(nlp, name: str):
    """A test of whether an attribute-ruler pattern of ``nlp`` may match a one-word Doc by its
    text, when that (besides its tag and whether it is whitespace) is all the ruler reads of a
    word: every other one-word Doc gets what the ruler gives a probe word with the same tag.
    None when the pipeline runs more than tagger and ruler, or a pattern reads more of the word
    (its shape, a negated set, an optional token ...): then the ruler runs on every Doc."""
    import re

    if name != "tagger" or [n for n in nlp.pipe_names if n not in ("tok2vec", name)] != ["attribute_ruler"]:
        return None
    texts = {"LOWER": set(), "ORTH": set()}
    regexes = {"LOWER": [], "ORTH": []}
    for entry in nlp.get_pipe("attribute_ruler").patterns:
        for pattern in entry["patterns"]:
            if any(not isinstance(k, str) or k.upper() == "OP" for tok in pattern for k in tok):
                return None  # an attribute by its id, or an optional token
            if len(pattern) != 1:  # two or more tokens: never a one-word Doc
                continue
            for key, value in pattern[0].items():
                key = {"TEXT": "ORTH"}.get(key.upper(), key.upper())
                if key in _ANNOTATIONS:
                    continue
                if key not in texts:
                    return None
                if isinstance(value, str):
                    texts[key].add(value)
                elif isinstance(value, dict) and set(value) == {"IN"} and all(isinstance(v, str) for v in value["IN"]):
                    texts[key] |= set(value["IN"])
                elif isinstance(value, dict) and set(value) == {"REGEX"}:
                    regexes[key].append(re.compile(value["REGEX"]))
                else:
                    return None

    def may_match(word: str) -> bool:
        lower = word.lower()
        return (word.isspace() or lower in texts["LOWER"] or word in texts["ORTH"]
                or any(r.search(lower) for r in regexes["LOWER"]) or any(r.search(word) for r in regexes["ORTH"]))

    return may_match


def tag_words(nlp, words: list[str], batch_size: int = 2048) -> pl.DataFrame:
    """pos, tag, pos_prob and single_token for each word, tagged alone (``spaces=[False]``).

    A word's Doc is the one spaCy's tokenizer makes of it when that is one token and no special
    case of the tokenizer (which may set the token's norm), else ``Doc(words=[word])``; the
    attribute ruler runs only on the words it may match by their text (:func:`_ruler_reads`)."""
    from spacy.tokens import Doc

    name = "tagger" if "tagger" in nlp.pipe_names else "morphologizer"
    component = nlp.get_pipe(name)
    ruler_reads = _ruler_reads(nlp, name)
    probe = "x" if ruler_reads is None else next((w for w in ("x", "qx", "xqz") if not ruler_reads(w)), None)
    if probe is None:  # a pattern may match every probe word: the ruler runs on every word
        ruler_reads, probe = None, "x"
    by_label = _by_label(nlp, component, probe)  # (POS, tag) of each label: coarse POS of the fine tags
    pos_of_label = np.array([by_label[lab][0] for lab in component.labels])
    others = [(n, p) for n, p in nlp.pipeline if n not in (name, "tok2vec")]
    tok2vec = nlp.get_pipe("tok2vec") if "tok2vec" in nlp.pipe_names else None
    special_cases = getattr(nlp.tokenizer, "rules", None)  # None: not spaCy's tokenizer
    pos, tag, prob, single, labels_of = [], [], [], [], {}
    for start in range(0, len(words), batch_size):
        chunk = words[start : start + batch_size]
        docs = []
        for w in chunk:
            doc = nlp.tokenizer(w)
            single.append(len(doc) == 1)
            own = special_cases is not None and len(doc) == 1 and doc[0].text == w and w not in special_cases
            docs.append(doc if own else Doc(nlp.vocab, words=[w], spaces=[False]))
        if tok2vec is not None:
            tok2vec.set_annotations(docs, tok2vec.predict(docs))
        scores = component.model.predict(docs)
        best = [s.argmax(1) for s in scores]
        component.set_annotations(docs, best)
        chosen = []
        for w, d in zip(chunk, docs):
            if ruler_reads is not None and not ruler_reads(w):
                p_, t_ = by_label[d[0].tag_]
            else:
                for _, proc in others:
                    d = proc(d)
                p_, t_ = d[0].pos_, d[0].tag_
            chosen.append(p_)
            tag.append(t_)
        pos += chosen
        for s, value in zip(scores, chosen):  # the probability of the labels of the chosen POS
            p = np.asarray(s[0], dtype=np.float64)
            if p.min() < 0 or abs(p.sum() - 1) > 1e-3:  # spaCy >= 3.5 taggers output logits at inference
                p = np.exp(p - p.max())
            p = p / p.sum()
            if value not in labels_of:
                labels_of[value] = pos_of_label == value
            prob.append(float(p[labels_of[value]].sum()))
    return pl.DataFrame({"pos": pos, "tag": tag, "pos_prob": prob, "single_token": single})


def pos_table(vocab: pl.DataFrame, nlp, min_pos_prob: float = MIN_POS_PROB, batch_size: int = BATCH_SIZE) -> pl.DataFrame:
    """Tag every English token of a vocabulary table with the pipeline ``nlp`` (a name or a
    loaded pipeline); ``kept`` marks single-token words with an unambiguous POS. Rows are the
    English tokens only; a word is tagged once however many tokens spell it."""
    if isinstance(nlp, str):
        nlp = load_tagger(nlp)
    english = vocab.filter(pl.col("is_english")).select("token_id", "word", "leading_space")
    words = english["word"].unique(maintain_order=True)  # a word with and without its leading space: tagged once
    tags = tag_words(nlp, words.to_list(), batch_size).with_columns(word=words)
    out = english.join(tags, on="word", how="left", maintain_order="left")
    return out.with_columns(kept=pl.col("single_token") & (pl.col("pos_prob") >= min_pos_prob)).select(POS_COLUMNS)


def write_pos(vocab_path, out, tagger: str = TAGGER, min_pos_prob: float = MIN_POS_PROB, batch_size: int = BATCH_SIZE) -> pl.DataFrame:
    """Tag the English tokens of a vocabulary file and write the POS table atomically,
    with the tagger's name and version in the file's metadata."""
    from .io import arrow_metadata, package_versions, read_arrow, write_arrow

    table = read_arrow(vocab_path)
    missing = [c for c in ("token_id", "word", "leading_space", "is_english") if c not in table.column_names]
    if missing:
        raise DistreachError(f"{vocab_path}: not a vocabulary table (missing {', '.join(missing)})")
    import spacy

    nlp = load_tagger(tagger)
    nlp_meta = nlp.meta
    df = pos_table(pl.from_arrow(table), nlp, min_pos_prob, batch_size)
    meta = {
        "model": arrow_metadata(table).get("model"),
        "tagger": tagger,
        "tagger_version": nlp_meta.get("version"),
        "spacy": spacy.__version__,
        "min_pos_prob": min_pos_prob,
        "packages": package_versions(),
    }
    write_arrow(df.to_arrow(), out, meta)
    return df
