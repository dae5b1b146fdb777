"""A model's vocabulary as a table: what text each token id stands for.

Byte-level BPE tokenizers (GPT-2, Llama-3, SmolLM2, Qwen) write bytes as printable characters
('Ġ' is a space); sentencepiece tokenizers (Gemma, Llama-2) write '▁' for a space and
``<0xNN>`` for byte-fallback pieces. :func:`token_bytes` resolves both to the exact bytes a
token adds to a text, so that joining the bytes of an encoding gives back the text.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl

from .tokens import special_ids, usable_mask

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_ENGLISH = re.compile(r"^[A-Za-z]+$")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTES = _byte_decoder()


def is_byte_level(pieces: list[str | None]) -> bool:
    """Whether the pieces use GPT-2's byte-level alphabet rather than sentencepiece markers."""
    return sum(1 for p in pieces if p and p.startswith("Ġ")) > sum(1 for p in pieces if p and p.startswith("▁"))


def token_bytes(tokenizer, size: int) -> tuple[list[str | None], list[bytes | None], np.ndarray, np.ndarray]:
    """(pieces, bytes, is_special, is_byte_fallback) for token ids 0..size-1; bytes are None for
    special tokens and for ids the tokenizer does not have (padding rows of the embedding matrix)."""
    n = min(size, len(tokenizer))
    special = special_ids(tokenizer)
    added = {i for i in getattr(tokenizer, "added_tokens_decoder", {}) if i < n}
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    byte_level = is_byte_level(pieces)
    out: list[bytes | None] = []
    flags = np.zeros(size, dtype=bool)
    fallback = np.zeros(size, dtype=bool)
    for i, p in enumerate(pieces):
        if p is None or i in special:
            flags[i] = i in special
            out.append(None)
            continue
        if i in added:  # added tokens are stored as plain text in both families
            out.append(p.encode("utf-8"))
        elif byte_level:
            try:
                out.append(bytes(_BYTES[c] for c in p))
            except KeyError:
                out.append(p.encode("utf-8"))
        elif (m := _BYTE_PIECE.match(p)) is not None:
            out.append(bytes([int(m.group(1), 16)]))
            fallback[i] = True
        else:
            out.append(p.replace("▁", " ").encode("utf-8"))
    pad = size - n
    return pieces + [None] * pad, out + [None] * pad, flags, fallback


def _text(b: bytes | None) -> str | None:
    try:
        return None if b is None else b.decode("utf-8")
    except UnicodeDecodeError:
        return None


def surface_forms(vocab: pl.DataFrame) -> list[str | None]:
    """The text each token id of a vocabulary table (:func:`vocab_table`) stands for; None for
    special tokens and for tokens that are not whole UTF-8 text (byte-fallback pieces, partial
    characters)."""
    return vocab.select(pl.when(~pl.col("is_byte_fallback")).then(pl.col("surface"))).to_series().to_list()


def vocab_table(tokenizer, size: int) -> pl.DataFrame:
    """One row per token id: raw piece, exact bytes, surface text (None where the bytes are not
    whole UTF-8), leading-space flag, the word without that space, special, byte-fallback and
    English flags. English: the word is one or more ASCII letters and the token is not a
    byte-fallback piece (the tokens Figs. 12 and 13 tag). ``is_usable``: a prompt or a drawn target
    may use the token (:func:`distreach.tokens.usable_mask`)."""
    pieces, raw, special, fallback = token_bytes(tokenizer, size)
    surface = [_text(b) for b in raw]
    lead = [s is not None and s.startswith(" ") for s in surface]
    words = [None if s is None else (s[1:] if ld else s) for s, ld in zip(surface, lead)]
    english = [w is not None and not f and _ENGLISH.match(w) is not None for w, f in zip(words, fallback)]
    return pl.DataFrame(
        {
            "token_id": pl.Series(np.arange(size), dtype=pl.Int64),
            "piece": pl.Series(pieces, dtype=pl.String),
            "surface_bytes": pl.Series(raw, dtype=pl.Binary),
            "surface": pl.Series(surface, dtype=pl.String),
            "leading_space": pl.Series(lead, dtype=pl.Boolean),
            "word": pl.Series(words, dtype=pl.String),
            "is_special": pl.Series(special, dtype=pl.Boolean),
            "is_byte_fallback": pl.Series(fallback, dtype=pl.Boolean),
            "is_english": pl.Series(english, dtype=pl.Boolean),
            "is_usable": pl.Series(usable_mask(tokenizer, size, pieces=pieces), dtype=pl.Boolean),
        }
    )


def token_texts(vocab: pl.DataFrame, ids) -> list[str]:
    """The text of each token id as the vocabulary table ``vocab`` (:func:`vocab_table`) gives it:
    its surface text, else (special tokens, pieces that are not whole UTF-8 text) its piece; an
    id past the table or without a piece is a padding row of the output layer."""
    surface, piece = vocab["surface"], vocab["piece"]
    out = []
    for i in ids:
        i = int(i)
        text = (surface[i] if surface[i] is not None else piece[i]) if 0 <= i < vocab.height else None
        out.append(f"<padding {i}>" if text is None else text)
    return out


def with_token_texts(rows: pl.DataFrame, vocabs: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Result rows with the text (:func:`token_texts`) of their target's and achieved
    distribution's top tokens (``p_top_tokens``, ``q_top_tokens``); ``vocabs``: each model's
    vocabulary table by model name."""
    p_text, q_text = [], []
    for r in rows.select("model", "p_top_ids", "q_top_ids").iter_rows(named=True):
        p_text.append(token_texts(vocabs[r["model"]], r["p_top_ids"]))
        q_text.append(token_texts(vocabs[r["model"]], r["q_top_ids"]))
    return rows.with_columns(p_top_tokens=pl.Series(p_text, dtype=pl.List(pl.String)),
                             q_top_tokens=pl.Series(q_text, dtype=pl.List(pl.String)))
