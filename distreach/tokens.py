"""Which token ids a prompt or a target may use, and which BOS token goes first.

**The vocabulary |V|.** A model's output layer can have more rows than its tokenizer has
tokens (Qwen2.5: 151,936 rows for 151,665 tokens): the rows past ``len(tokenizer)`` are
padding that no text ever encodes to. |V| is the number of tokens the tokenizer has, capped
at the output rows (:func:`vocab_support`); every target puts zero probability on the padding
rows, and the entropy grid tops out at log |V|. Special and reserved tokens are tokens of |V|
(the model can output them) and may carry target mass.

**Usable tokens.** Where a token is drawn or chosen (hard prompt positions, vocabulary inits
of soft prompts, LM-generated prompts, outlier ids, POS-uniform draws) only *usable* ids are
taken (:func:`usable_mask`): inside the tokenizer, not a special token (``all_special_ids``
and added tokens marked special), and not a reserved or unused placeholder by name (Llama-3's
``<|reserved_special_token_N|>``, Gemma's ``<unusedN>``, BERT's ``[unusedN]``, T5's
``<extra_id_N>``, ...; :data:`RESERVED_PATTERNS`).

**BOS policy.** ``auto`` (the default) puts the tokenizer's BOS token before the prompt when
the tokenizer has one and nothing when it has none (Qwen2.5); ``bos`` requires one;
``none`` never puts one. :func:`resolve_bos` turns a policy into a token id (or None) once,
before any forward pass.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import DistreachError

BOS_POLICIES = ("auto", "bos", "none")

# placeholder tokens reserved for later use, by name, as tokenizers of the paper's and related
# model families spell them
RESERVED_PATTERNS = (
    r"<\|reserved_special_token_\d+\|>",  # Llama-3
    r"<unused\d+>",  # Gemma
    r"\[unused\d+\]",  # BERT
    r"<extra_id_\d+>",  # T5
    r"<\|reserved_\d+\|>",
    r"<reserved_\d+>",
    r"<\|extra_\d+\|>",  # Qwen (tiktoken-style extras)
    r"<\|dummy_\d+\|>",
    r"<\|placeholder\d*\|>",
)
_RESERVED = re.compile("^(?:" + "|".join(RESERVED_PATTERNS) + ")$")


def is_reserved(piece: str | None) -> bool:
    """Whether a token's piece names a reserved or unused placeholder."""
    return piece is not None and _RESERVED.match(piece) is not None


def vocab_support(tokenizer, n_rows: int) -> int:
    """|V|: the tokenizer's tokens, capped at the model's ``n_rows`` output rows."""
    return min(len(tokenizer), int(n_rows))


def special_ids(tokenizer) -> set[int]:
    """The tokenizer's special tokens and its added tokens marked special."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}


def usable_mask(tokenizer, n_rows: int, exclude_special: bool = True, pieces: list | None = None) -> np.ndarray:
    """Bool array over ``n_rows`` ids: True where a prompt may use the token (see module doc).
    With ``exclude_special=False`` only padding rows are excluded. ``pieces``: the tokenizer's
    pieces of ids 0.. where the caller has them already (``convert_ids_to_tokens``)."""
    n = vocab_support(tokenizer, n_rows)
    ok = np.zeros(int(n_rows), dtype=bool)
    ok[:n] = True  # rows past the tokenizer are padding
    if exclude_special:
        ok[[i for i in special_ids(tokenizer) if 0 <= i < n]] = False
        pieces = tokenizer.convert_ids_to_tokens(list(range(n))) if pieces is None else pieces[:n]
        ok[[i for i, p in enumerate(pieces) if is_reserved(p)]] = False
    return ok


def usable_ids(tokenizer, n_rows: int) -> np.ndarray:
    """The usable token ids (ascending); an error if there are none."""
    return ids_of(usable_mask(tokenizer, n_rows))


def ids_of(mask) -> np.ndarray:
    """The ids a usable mask (:func:`usable_mask`, a vocabulary table's ``is_usable``) marks,
    ascending; an error if there are none."""
    ids = np.flatnonzero(np.asarray(mask))
    if ids.size == 0:
        raise DistreachError("the tokenizer has no usable token (every token is special, reserved or padding)")
    return ids


def resolve_bos(bos: int | None, policy: str, model: str = "the model") -> int | None:
    """The token id to put before every prompt under ``policy``, or None for nothing (``bos``:
    the tokenizer's BOS token id, None where it has none)."""
    if policy not in BOS_POLICIES:
        raise DistreachError(f"tuning.bos: must be one of {BOS_POLICIES} (got {policy!r})")
    if policy == "none":
        return None
    if bos is None and policy == "bos":
        raise DistreachError(f"tuning.bos: model {model} has no BOS token; use bos: auto or none")
    return bos


def bos_used(bos_id: int | None) -> str:
    """What a row records as the BOS used: ``bos`` (a BOS token went first) or ``none``."""
    return "none" if bos_id is None else "bos"
