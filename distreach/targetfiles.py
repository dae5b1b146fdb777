"""A user's target file: .arrow (a target table), .npy (probabilities) or .json
({token: probability}), read into a target table checked against a model's vocabulary."""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import torch

from .errors import DistreachError, counted, one_line
from .infotheory import entropy
from .units import DEFAULT_UNIT, from_unit, to_unit
from .targets import RENORMALISE_TOLERANCE, read_target_matrix, targets_table
log = logging.getLogger(__name__)

TARGET_FORMATS = (".arrow", ".npy", ".json")


def check_target_path(path: str | os.PathLike) -> Path:
    """The target file's path if it exists, is not empty and has a known format (checked
    before any model is loaded)."""
    path = Path(path)
    if path.is_dir():
        raise DistreachError(f"{path}: a folder, not a target file")
    if not path.is_file():
        raise DistreachError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DistreachError(f"{path}: the file is empty")
    if path.suffix.lower() not in TARGET_FORMATS:
        raise DistreachError(f"{path}: unknown format {path.suffix or '(none)'}; use .arrow, .npy or .json")
    return path


def read_target(path: str | os.PathLike, loaded, unit: str | None = None, ids: list[str] | None = None) -> pa.Table:
    """A target table from a file, checked against the model's vocabulary:

    - ``.arrow``: a target table (``distreach target`` writes one);
    - ``.npy``: probabilities, shape [V] or [n, V], V the model's output rows (``vocab_size``);
    - ``.json``: ``{"token string": probability}``; tokens not named get 0. Every string must be
      one token of this model or a special token's name, and given once (the error names those
      that are not tokens).

    Entropies (and the KL of a tuning of the table) are in ``unit``; where it is None, an .arrow
    table's own unit (its first row's), else DEFAULT_UNIT. ``ids``: only the targets of these ids, in
    the file's order (None: every one; an id the file does not hold is an error that lists those it
    does). ``loaded`` None: an .arrow file checked for all but its length (before a model is at hand).
    Errors name the file and what is wrong with its data."""
    path = check_target_path(path)
    return select_targets(_read(path, loaded, unit), ids, str(path))


def select_targets(table: pa.Table, ids: list[str] | None, where: str) -> pa.Table:
    """The rows of a target table whose ``target_id`` is one of ``ids``, in the table's order (every
    row where ``ids`` is None); an id it does not hold is an error naming ``where`` and the ids it holds."""
    if ids is None:
        return table
    held = table.column("target_id").to_pylist()
    if missing := [i for i in dict.fromkeys(ids) if i not in held]:
        shown = ", ".join(held[:8]) + (f", ... ({len(held)} in all)" if len(held) > 8 else "")
        raise DistreachError(f"{where}: no target {', '.join(map(repr, missing))}; its targets: {shown}")
    return table.filter(pc.is_in(table.column("target_id"), pa.array(list(ids), pa.string())))


def _read(path: Path, loaded, unit: str | None) -> pa.Table:
    suffix = path.suffix.lower()
    if loaded is None and suffix != ".arrow":
        raise DistreachError(f"{path}: a {suffix} target is read against a model's vocabulary: give the model")
    if suffix == ".arrow":
        meta, probs = read_target_matrix(path, getattr(loaded, "vocab_size", None))  # checked and renormalised;
        with np.errstate(divide="ignore"):                                        # kind and family columns kept
            logp = np.log(probs).reshape(-1)
        meta = in_unit(meta, unit or meta.column("entropy_unit")[0].as_py())
        return meta.append_column("logprobs", pa.FixedSizeListArray.from_arrays(pa.array(logp, pa.float32()), probs.shape[1]))
    if suffix == ".npy":
        return _npy_target(path, loaded, unit or DEFAULT_UNIT)
    return _json_target(path, loaded, unit or DEFAULT_UNIT)  # check_target_path admits nothing else


def in_unit(table: pa.Table, unit: str) -> pa.Table:
    """A target table's entropies in ``unit``, each row converted from its own ``entropy_unit``
    (a tuning reports every row in one unit)."""
    rows = table.column("entropy_unit")
    for row_unit in set(rows.to_pylist()) - {unit}:
        factor = to_unit(from_unit(1.0, row_unit), unit)
        for name in ("requested_entropy", "achieved_entropy"):
            values = table.column(name)  # nulls stay null
            values = pc.if_else(pc.equal(rows, row_unit), pc.multiply(values, factor), values)
            table = table.set_column(table.column_names.index(name), name, values)
    units = pa.array([unit] * table.num_rows, pa.string())
    return table.set_column(table.column_names.index("entropy_unit"), "entropy_unit", units)


def check_target_file(path: str | os.PathLike, unit: str | None = None, ids: list[str] | None = None) -> None:
    """What :func:`read_target` checks of a file before its model's vocabulary is at hand (for a model
    that must be fetched first): an .arrow table all but its length, a .npy array all but its length
    (its shape, every row's probabilities), a .json object all but its strings (its probabilities);
    and that it holds the targets ``ids``."""
    path = check_target_path(path)
    suffix = path.suffix.lower()
    if suffix == ".arrow":
        select_targets(_read(path, None, unit), ids, str(path))
        return
    if suffix == ".npy":
        held = [f"{path.stem}-{i}" for i in range(len(_npy_probs(path, None)))]
    else:
        dist = _json_object(path)
        _check_values(dist, str(path))
        _finite_probabilities(np.array([float(v) for v in dist.values()]), str(path))
        held = [path.stem]
    select_targets(pa.table({"target_id": pa.array(held, pa.string())}), ids, str(path))


def _npy_probs(path: Path, loaded) -> np.ndarray:
    """[n, V] probabilities of a .npy file, each row checked (and renormalised); V the vocabulary
    size of ``loaded`` (any where it is None)."""
    vocab = getattr(loaded, "vocab_size", None)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy's value, OS and EOF errors of a corrupt or truncated file
        raise DistreachError(f"{path}: not a plain numeric .npy array ({one_line(exc)})") from None
    if not isinstance(arr, np.ndarray) or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DistreachError(f"{path}: array of {getattr(arr, 'dtype', type(arr).__name__)}, expected real numbers")
    shape, arr = arr.shape, np.atleast_2d(arr.astype(np.float64))
    if len(shape) not in (1, 2) or (vocab is not None and arr.shape[1] != vocab):
        size, model = ("V", "") if loaded is None else (vocab, f" for model {loaded.name}")
        raise DistreachError(f"{path}: shape {shape}, expected [{size}] or [n, {size}]{model}")
    if not len(arr):
        raise DistreachError(f"{path}: shape {shape}: no targets in the file")
    return np.stack([_finite_probabilities(r, f"{path} row {i}") for i, r in enumerate(arr)])


def _npy_target(path: Path, loaded, unit: str) -> pa.Table:
    probs = _npy_probs(path, loaded)
    return _user_table(probs, [f"{path.stem}-{i}" for i in range(len(probs))], unit)


def _json_object(path: Path):
    """A .json target file's data (a top-level object's keys given once)."""
    try:
        data = json.loads(path.read_bytes(), object_pairs_hook=_Pairs)
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors; nesting too deep
        raise DistreachError(f"{path}: not valid JSON ({one_line(exc)})") from None
    if isinstance(data, _Pairs) and data.twice:
        raise DistreachError(f"{path}: token {data.twice[0]!r} is given twice")
    return data


def _json_target(path: Path, loaded, unit: str) -> pa.Table:
    return token_target(_json_object(path), loaded, path.stem, unit, where=str(path))


class _Pairs(dict):
    """A JSON object with the keys given more than once (json keeps the last value without a
    word); a target file's top-level object must have none."""

    def __init__(self, pairs: list):
        super().__init__(pairs)
        self.twice = [key for key, n in Counter(key for key, _ in pairs).items() if n > 1]


def token_target(dist: dict, loaded, name: str = "user", unit: str = DEFAULT_UNIT, where: str | None = None) -> pa.Table:
    """A one-row target table (target id ``name``) from ``{"token string": probability}``, checked
    against the model's vocabulary: tokens not named get 0; every string must be exactly one token
    of this model, leading space included (``" Paris"``, not ``"Paris"``), or a special token's
    name (``"<|endoftext|>"``); probabilities are real numbers (Python's or numpy's). Errors start
    with ``where`` (default: ``target NAME``)."""
    where = where or f"target {name}"
    vocab = loaded.vocab_size
    _check_values(dist, where)
    ids = token_ids(loaded.tokenizer, list(dist), vocab, where)
    probs = np.zeros(vocab)
    probs[ids] = [float(v) for v in dist.values()]
    probs = _finite_probabilities(probs, where)
    return _user_table(probs[None], [name], unit)


def _check_values(dist, where: str) -> None:
    """A {"token string": probability} object's probabilities: real numbers, finite, not negative."""
    if not isinstance(dist, dict) or not dist:
        raise DistreachError(f"{where}: expected a non-empty object {{\"token string\": probability}}")
    for key, value in dist.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise DistreachError(f"{where}: token {key!r} has probability {value!r}, not a number")
        if not math.isfinite(math.inf if isinstance(value, int) and abs(value) >= 2**1000 else float(value)):
            raise DistreachError(f"{where}: token {key!r} has probability {value} (NaN or infinite)")
        if value < 0:
            raise DistreachError(f"{where}: token {key!r} has a negative probability ({value})")


def _logprob_hint(p: np.ndarray) -> str:
    """For a refused probability vector: a hint where it looks like log-probabilities (their exp sums to
    1; -inf: a zero), else nothing."""
    with np.errstate(over="ignore", invalid="ignore"):
        logprobs = abs(float(np.exp(p.astype(np.float64)).sum()) - 1) <= RENORMALISE_TOLERANCE
    return "; these look like log-probabilities: give their exp" if logprobs else ""


def _finite_probabilities(p: np.ndarray, where: str) -> np.ndarray:
    """Check one probability vector; renormalise a sum within tolerance of 1."""
    if p.size == 0:
        raise DistreachError(f"{where}: no probabilities")
    bad = np.flatnonzero(~np.isfinite(p))
    if bad.size:
        raise DistreachError(f"{where}: entry {bad[0]} is {p[bad[0]]} (NaN or infinite){_logprob_hint(p)}")
    neg = np.flatnonzero(p < 0)
    if neg.size:
        raise DistreachError(f"{where}: entry {neg[0]} is negative ({p[neg[0]]}){_logprob_hint(p)}")
    total = float(p.sum())
    if abs(total - 1) > RENORMALISE_TOLERANCE:
        raise DistreachError(f"{where}: probabilities sum to {total:.6g}, not 1 (tolerance {RENORMALISE_TOLERANCE})")
    if abs(total - 1) > 1e-9:
        log.info("%s: probabilities sum to %.9g; renormalised", where, total)
    return p / total


def _user_table(probs: np.ndarray, ids: list[str], unit: str, kind: str = "user") -> pa.Table:
    with np.errstate(divide="ignore"):
        logp = np.log(probs.astype(np.float64))
    ent = to_unit(entropy(torch.from_numpy(logp)).numpy(), unit) + 0.0  # a one-token target's -0 as 0
    return targets_table(ids, kind, ent, ent, unit, [0] * len(ids), logp.astype(np.float32))


def token_ids(tokenizer, strings: list[str], vocab: int, where: str) -> list[int]:
    """The token id of each string: its exact surface text, leading space included, or else a
    special token's name (``"<|endoftext|>"``; a text token of the same text comes first)."""
    from .vocab import surface_forms, token_texts, vocab_table

    table = vocab_table(tokenizer, vocab)
    first: dict[str, int] = {}
    for i, s in enumerate(surface_forms(table)):
        if s is not None and s not in first:
            first[s] = i
    specials = table.filter(pl.col("is_special"))
    for i, piece in zip(specials["token_id"], specials["piece"]):  # special tokens have no surface text
        first.setdefault(piece, i)
    missing = [s for s in strings if s not in first]
    if missing:
        surfaces = surface_forms(table)
        piece_of = {p: i for i, p in enumerate(table["piece"]) if p is not None and surfaces[i] is not None}

        def why(s) -> str:  # a token's piece given for its text, or the tokens the text makes
            if not isinstance(s, str):
                return f"{s!r} (not a string: give a token's text)"
            if s in piece_of:
                return f"{s!r} (the piece of token {surfaces[piece_of[s]]!r}: give its text)"
            ids = tokenizer(s, add_special_tokens=False).input_ids
            if not ids:
                return f"{s!r} (no tokens)"
            if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
                return f"{s!r} (not in the vocabulary)"
            texts = token_texts(table, ids[:4])
            return f"{s!r} ({counted(len(ids), 'token')}: " + ", ".join(map(repr, texts)) + (", ...)" if len(ids) > 4 else ")")

        shown = ", ".join(why(s) for s in missing[:5]) + (" ..." if len(missing) > 5 else "")
        are = "1 string is not a single token" if len(missing) == 1 else f"{len(missing)} strings are not single tokens"
        raise DistreachError(f"{where}: {are} of this model: {shown}")
    return [first[s] for s in strings]
