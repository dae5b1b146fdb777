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
        nlp = spacy.load(name)
    except OSError:
        raise DistreachError(
            f"tagger {name!r} is not installed (a spaCy pipeline package; see envs/pos.yaml)"
        ) from None
    keep = [n for n in nlp.pipe_names if n in TAG_COMPONENTS]
    if "tagger" not in keep and "morphologizer" not in keep:
        raise DistreachError(f"tagger {name!r} has no tagger or morphologizer component")
    return spacy.load(name, exclude=[n for n in nlp.pipe_names if n not in keep])


def _tag_to_pos(nlp, component) -> dict[str, str]:
    """Coarse POS of each fine tag label, as the pipeline's attribute ruler maps it."""
    from spacy.tokens import Doc

    out = {}
    for label in component.labels:
        doc = Doc(nlp.vocab, words=["x"], spaces=[False])
        doc[0].tag_ = label
        if "attribute_ruler" in nlp.pipe_names:
            doc = nlp.get_pipe("attribute_ruler")(doc)
        out[label] = doc[0].pos_ or label.split("|")[0].removeprefix("POS=")
    return out


def tag_words(nlp, words: list[str], batch_size: int = 2048) -> pl.DataFrame:
    """pos, tag, pos_prob and single_token for each word, tagged alone (``spaces=[False]``)."""
    from spacy.tokens import Doc

    name = "tagger" if "tagger" in nlp.pipe_names else "morphologizer"
    component = nlp.get_pipe(name)
    to_pos = _tag_to_pos(nlp, component)
    labels = list(component.labels)
    pos_of_label = np.array([to_pos[lab] for lab in labels])
    others = [(n, p) for n, p in nlp.pipeline if n not in (name, "tok2vec")]
    tok2vec = nlp.get_pipe("tok2vec") if "tok2vec" in nlp.pipe_names else None
    pos, tag, prob, single = [], [], [], []
    for start in range(0, len(words), batch_size):
        chunk = words[start : start + batch_size]
        docs = [Doc(nlp.vocab, words=[w], spaces=[False]) for w in chunk]
        if tok2vec is not None:
            tok2vec.set_annotations(docs, tok2vec.predict(docs))
        scores = component.model.predict(docs)
        best = [s.argmax(1) for s in scores]
        component.set_annotations(docs, best)
        for _, proc in others:
            docs = [proc(d) for d in docs]
        for w, d, s in zip(chunk, docs, scores):
            p = np.asarray(s[0], dtype=np.float64)
            if p.min() < 0 or abs(p.sum() - 1) > 1e-3:  # spaCy >= 3.5 taggers output logits at inference
                p = np.exp(p - p.max())
            p = p / p.sum()
            chosen = d[0].pos_
            pos.append(chosen)
            tag.append(d[0].tag_)
            prob.append(float(p[pos_of_label == chosen].sum()))
            single.append(len(nlp.tokenizer(w)) == 1)
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
