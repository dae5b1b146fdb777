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

import pyarrow as pa

from .errors import DistreachError

log = logging.getLogger(__name__)
INITS = 5  # prompt initialisations per target unless asked otherwise


def cache_dir() -> Path:
    return Path(os.environ.get("DISTREACH_CACHE", Path.home() / ".cache" / "distreach")) / "models"


def model_source(model: str) -> tuple[str, dict]:
    """(name, source) for an embedded name, a .gguf file, a model folder or a Hugging Face id."""
    from .embedded import EMBEDDED

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


def _cache_folder(model: str) -> tuple[str, dict, Path]:
    name, source = model_source(model)
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:12]
    return name, source, cache_dir() / f"{name}-{key}"


def load_model(model: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False):
    """Materialise ``model`` once into the cache (safetensors) and load it: a LoadedModel."""
    from .models import MANIFEST, ModelSpec, auto_dtype, load_materialised, materialise, resolve_device

    dev = resolve_device(device)  # a device that is not there fails before any work
    name, source, folder = _cache_folder(model)
    if not (folder / MANIFEST).is_file():
        materialise(ModelSpec(name, source, trust_remote_code), folder)
        log.info("converted %s into %s (once; later runs reuse it)", model, folder)
    return load_materialised(folder, dtype=auto_dtype(dev) if dtype == "auto" else dtype, device=dev)[0]


def model_vocab(model: str):
    """``model``'s name, tokenizer and vocabulary size (what :func:`read_target` checks a target
    against) without loading weights or writing anything: read from a model folder or from the
    model's entry in the cache. None when the model must be converted first (an embedded model
    used for the first time, a .gguf file, a Hugging Face id) or its folder cannot be read this way."""
    from types import SimpleNamespace

    from .models import MANIFEST, read_manifest

    name, source, folder = _cache_folder(model)
    try:
        if (folder / MANIFEST).is_file():
            where, vocab = folder, read_manifest(folder)["vocab_size"]
        elif "local" in source:
            config = json.loads((Path(source["local"]) / "config.json").read_text())
            where, vocab = Path(source["local"]), config.get("vocab_size") or config["text_config"]["vocab_size"]
        else:
            return None
        from transformers import AutoTokenizer

        from .tokens import vocab_support

        tok = AutoTokenizer.from_pretrained(where)
        return SimpleNamespace(name=name, tokenizer=tok, vocab_size=int(vocab), support=vocab_support(tok, int(vocab)))
    except Exception:  # an unusual folder: the full load checks it and says what is wrong
        return None


def read_target(path: str | os.PathLike, loaded, unit: str = "bits") -> pa.Table:
    """A target table from a .arrow, .npy or .json file (:func:`distreach.targets.read_target`)."""
    from .targets import read_target

    return read_target(path, loaded, unit)


def check_target_path(path: str | os.PathLike) -> Path:
    """The target file's path if it exists, is not empty and has a known format
    (:func:`distreach.targets.check_target_path`)."""
    from .targets import check_target_path

    return check_target_path(path)


def tune_target(loaded, target: pa.Table, inits: int = INITS, out: str | os.PathLike | None = None, seed: int = 0,
                progress=None, **tuning) -> "pl.DataFrame":
    """Tune ``inits`` prompts per target of ``target`` on ``loaded``; one result row per
    (target, init), with the columns of a collected table. ``tuning`` are
    :class:`distreach.engine.TuneConfig` fields (``method``, ``prefix_len``, ...; unset ones
    keep its defaults). Written to ``out`` if given (the tuning state is checkpointed next
    to it, so a killed run started again resumes)."""
    import polars as pl

    from .shards import checkpoint_path, tune_rows, tuning_config, write_shard
    from .targets import target_probs

    cfg = tuning_config(tuning)
    meta, probs = target_probs(target, loaded.vocab_size)
    table = tune_rows(loaded, meta, probs, experiment="cli", method=cfg.method, tuning=cfg, inits=inits, seed=seed,
                      checkpoint=checkpoint_path(out) if out is not None else None, progress=progress)
    if out is not None:
        write_shard(table, out)
    return pl.from_arrow(table)


def make_target(kind: str, vocab_size: int, entropy: float, unit: str = "bits", k: int = 1, n: int = 1, seed: int = 0,
                tokenizer=None) -> pa.Table:
    """``n`` vanilla (Eq. 1) or outlier (``k`` outlier tokens, Eq. 2-3) targets of the given entropy
    over ``vocab_size`` output rows. With the model's ``tokenizer``, probability goes only to its
    |V| tokens (rows past them are padding) and outlier tokens are usable ones
    (:mod:`distreach.tokens`)."""
    from .families import OutlierSettings, outlier_targets
    from .units import check_unit
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
