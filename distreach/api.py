"""distreach for your own model and target, without a workflow (the ``distreach`` CLI calls these).

>>> from distreach import api
>>> loaded = api.load_model("smollm2")                      # embedded, HF id, folder or .gguf
>>> target = api.read_target("target.json", loaded)        # {"token string": probability, ...}
>>> target = api.token_target({" Paris": 0.7, " Rome": 0.3}, loaded, "capitals")  # the same, from a dict
>>> result = api.tune_target(loaded, target, method="soft", inits=2, out="result.arrow")
>>> result["kl_min"].min()

A target is a target table (:mod:`distreach.targets`): one row per distribution over the
model's vocabulary. Everything a function writes is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pyarrow as pa

from .errors import DistreachError
from .schema import default
from .units import DEFAULT_UNIT

log = logging.getLogger(__name__)
INITS = default("experiments.*.inits")  # prompt initialisations per target unless asked otherwise


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
        raise DistreachError(f"--model {model}: not an embedded model ({known}), a folder, a .gguf file or a Hugging Face id "
                              "(org/name, as openai-community/gpt2)")
    return model.replace("/", "--"), {"hf": model}


def _cache_folder(model: str) -> tuple[str, dict, Path]:
    name, source = model_source(model)
    return name, source, cache_dir() / f"{name}-{_source_key(source)}"


def load_model(model: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False):
    """Materialise ``model`` once into the cache (safetensors) and load it: a LoadedModel."""
    from .models import auto_dtype, load_materialised, resolve_device

    dev = resolve_device(device)  # a device that is not there fails before any work
    folder = converted(model, trust_remote_code)
    return load_materialised(folder, dtype=auto_dtype(dev) if dtype == "auto" else dtype, device=dev)[0]


def converted(model: str, trust_remote_code: bool = False) -> Path:
    """``model``'s folder in the cache, materialised into it (safetensors) the first time."""
    from .models import MANIFEST, ModelSpec, materialise

    name, source, folder = _cache_folder(model)
    if not (folder / MANIFEST).is_file():
        materialise(ModelSpec(name, source, trust_remote_code), folder)
        log.info("converted %s into %s (once; later runs reuse it)", model, folder)
    return folder


def model_vocab(model: str):
    """``model``'s name, tokenizer and vocabulary size (what :func:`read_target` checks a target
    against) without loading weights or writing anything: read from a model folder or from the
    model's entry in the cache. An embedded model used for the first time or a .gguf file gives
    its vocabulary size only (tokenizer None): from the embedded registry, from the GGUF file's
    tensor metadata. None for a Hugging Face id not yet converted, or a folder or file that cannot
    be read this way (the full load then says what is wrong)."""
    from types import SimpleNamespace

    from .embedded import EMBEDDED
    from .models import MANIFEST, read_manifest

    name, source, folder = _cache_folder(model)
    try:
        if (folder / MANIFEST).is_file():
            where, vocab = folder, read_manifest(folder)["vocab_size"]
        elif "local" in source:
            config = json.loads((Path(source["local"]) / "config.json").read_text())
            where, vocab = Path(source["local"]), config.get("vocab_size") or config["text_config"]["vocab_size"]
        elif name in EMBEDDED and source == EMBEDDED[name]["source"]:
            return SimpleNamespace(name=name, tokenizer=None, vocab_size=EMBEDDED[name]["vocab_size"], support=None)
        elif "gguf_file" in source:
            return SimpleNamespace(name=name, tokenizer=None, vocab_size=gguf_vocab_size(source["gguf_file"]), support=None)
        else:
            return None
        from transformers import AutoTokenizer

        from .tokens import vocab_support

        tok = AutoTokenizer.from_pretrained(where)
        return SimpleNamespace(name=name, tokenizer=tok, vocab_size=int(vocab), support=vocab_support(tok, int(vocab)))
    except Exception:  # an unusual folder: the full load checks it and says what is wrong
        return None


def gguf_vocab_size(path: str | os.PathLike) -> int:
    """The rows of a GGUF model's output embedding (its token embedding when the two are tied),
    from the file's tensor metadata: the vocabulary size the converted model has."""
    import gguf

    shapes = {t.name: t.shape for t in gguf.GGUFReader(path).tensors}
    return int(shapes.get("output.weight", shapes["token_embd.weight"])[-1])


def read_target(path: str | os.PathLike, loaded, unit: str | None = None, ids: list[str] | None = None) -> pa.Table:
    """A target table from a .arrow, .npy or .json file, its entropies in ``unit``; ``ids``: only
    the targets of these ids (:func:`distreach.targetfiles.read_target`)."""
    from .targetfiles import read_target

    return read_target(path, loaded, unit, ids)


def token_target(dist: dict, loaded, name: str = "user", unit: str = DEFAULT_UNIT) -> pa.Table:
    """A one-row target table named ``name`` from ``{"token string": probability}`` (what a .json
    target file holds; each string exactly one token, leading space included, or a special
    token's name: :func:`distreach.targetfiles.token_target`)."""
    from .targetfiles import token_target

    return token_target(dist, loaded, name, unit)


def check_target_path(path: str | os.PathLike) -> Path:
    """The target file's path if it exists, is not empty and has a known format
    (:func:`distreach.targets.check_target_path`)."""
    from .targetfiles import check_target_path

    return check_target_path(path)


def tune_target(loaded, target: pa.Table, inits: int = INITS, out: str | os.PathLike | None = None, seed: int = 0,
                progress=None, **tuning) -> "pl.DataFrame":
    """Tune ``inits`` prompts per target of ``target`` on ``loaded`` (a LoadedModel, or its
    :class:`distreach.engine.TuningContext` under these settings); one result row per
    (target, init), with the columns of a collected table. ``tuning`` are
    :class:`distreach.settings.TuneConfig` fields (``method``, ``prefix_len``, ...; unset ones
    keep its defaults). Written to ``out`` if given (the tuning state is checkpointed next
    to it, so a killed run started again resumes)."""
    import polars as pl

    from .checkpoint import checkpoint_path
    from .engine import model_of
    from .settings import tuning_config
    from .tuning import tune_rows, write_shard
    from .targets import target_probs
    from .targetfiles import in_unit

    cfg = tuning_config(tuning)
    meta, probs = target_probs(target, model_of(loaded).vocab_size)
    meta = in_unit(meta, meta.column("entropy_unit")[0].as_py())  # every row in its first row's unit
    table = tune_rows(loaded, meta, probs, experiment="cli", method=cfg.method, tuning=cfg, inits=inits, seed=seed,
                      checkpoint=checkpoint_path(out) if out is not None else None, progress=progress)
    if out is not None:
        write_shard(table, out)
    return pl.from_arrow(table)


def make_target(kind: str, vocab_size: int, entropy: float, unit: str = DEFAULT_UNIT, k: int = 1, n: int = 1, seed: int = 0,
                tokenizer=None) -> pa.Table:
    """``n`` vanilla (Eq. 1) or outlier (``k`` outlier tokens, Eq. 2-3) targets of the given entropy
    over ``vocab_size`` output rows, ids ``<kind>-<entropy><unit>[-k<k>]-s<seed>-<i>``. With the
    model's ``tokenizer``, probability goes only to its |V| tokens (rows past them are padding) and
    outlier tokens are usable ones (:mod:`distreach.tokens`)."""
    from .families import OutlierSettings, outlier_targets
    from .units import check_unit
    from .targets import pad_rows
    from .vanilla import EntropyGrid, VanillaSettings, vanilla_targets
    from .infotheory import max_entropy
    from .tokens import usable_ids, vocab_support

    check_unit(unit)
    width = vocab_size
    pool = None
    if tokenizer is not None:
        vocab_size = vocab_support(tokenizer, width)
        pool = usable_ids(tokenizer, vocab_size)
    top = max_entropy(vocab_size, unit)
    if not 0 <= entropy <= top + 1e-9:
        raise DistreachError(f"--entropy {entropy}: must be within 0..{top:.4g} {unit} (log |V| of this model)")
    if kind == "vanilla":
        grid = EntropyGrid(start=entropy, stop=entropy, step=1.0, include_max=False, unit=unit)
        table = vanilla_targets(vocab_size, grid, VanillaSettings(per_level=n, seed=seed))
    elif kind == "outlier":
        if not 1 <= k < vocab_size:
            raise DistreachError(f"--k {k}: must be between 1 and |V| - 1 = {vocab_size - 1}")
        table = outlier_targets(vocab_size, [entropy], unit, OutlierSettings(per_level=n, ks=(k,), seed=seed), pool)
    else:
        raise DistreachError(f"target kind {kind!r}: use vanilla or outlier")
    # ids that name what made each target, so that targets made by other calls keep other ids
    name = f"{kind}-{entropy + 0.0:.10g}{unit}" + (f"-k{k}" if kind == "outlier" else "") + f"-s{seed}"  # -0.0 as 0
    table = table.set_column(table.column_names.index("target_id"), "target_id",
                             pa.array([f"{name}-{i}" for i in range(table.num_rows)], pa.string()))
    return pad_rows(table, width)


# ---------------------------------------------------------------- what a result row produced

# columns a result table needs for show and generate (tables written before prompts and top tokens
# were kept lack them)
RESULT_NEEDS = ("experiment", "model", "method", "target_id", "init_index", "kl_min", "model_source", "model_sha256",
                "p_top_ids", "p_top_probs", "q_on_p_top", "q_top_ids", "q_top_probs", "soft_positions", "soft_prompt")


def check_texts(tokenizer, texts: list[str], bos_id: int | None, bos: str) -> list[list[int]] | None:
    """The token ids of each text (the tokenizer's, no special tokens added), refusing what
    :func:`score_texts` cannot feed the model: no texts, or a text of no tokens with no BOS token
    (``bos_id`` None, under the policy ``bos``) before it. ``tokenizer`` None: what can be told
    without one (an empty text has no tokens); returns None."""
    if not texts:
        raise DistreachError("no text to score")
    encoded = [tokenizer(t, add_special_tokens=False).input_ids for t in texts] if tokenizer is not None else None
    if bos_id is None:
        for text, ids in zip(texts, encoded or [None] * len(texts)):
            if not text or ids == []:
                raise DistreachError(f"text {text!r}: no tokens, and no BOS token before it (bos policy {bos}): "
                                     "nothing to feed the model")
    return encoded


def score_texts(loaded, target: pa.Table, texts: list[str], bos: str = "auto", top_k: int = 20) -> "pl.DataFrame":
    """What each text typed in as a prompt gives against each target of ``target``: one row per
    (target, text), targets first, with the model's name, the text's token ids (:func:`check_texts`; after the BOS
    token of the policy ``bos``), ``kl`` = KL(p || q) of the model's next-token distribution q
    after them, q's entropy, both in the target's ``entropy_unit``, and, as a result table has
    them, the target's ``top_k`` most probable tokens (with p and q) and q's own
    (:func:`distreach.tuning.top_token_columns`, with their text). ``loaded``: a LoadedModel."""
    from types import SimpleNamespace

    import polars as pl
    import torch

    from .engine import check_support, top_ids
    from .infotheory import entropy, kl
    from .prompts import next_token_logprobs
    from .targets import target_probs
    from .tokens import resolve_bos
    from .tuning import top_token_columns
    from .units import to_unit
    from .vocab import vocab_table, with_token_texts

    if top_k < 0:
        raise DistreachError(f"top_k must be >= 0 (got {top_k})")
    meta, probs = target_probs(target, loaded.vocab_size)
    p = torch.from_numpy(probs)
    check_support(loaded, p)
    bos_id = resolve_bos(loaded.tokenizer.bos_token_id, bos, loaded.name)
    encoded = check_texts(loaded.tokenizer, texts, bos_id, bos)
    for text, ids in zip(texts, encoded):
        loaded.check_positions(len(ids) + (bos_id is not None), f"text {text[:40]!r}")
    logq = torch.stack([next_token_logprobs(loaded, None, ids, bos_id) for ids in encoded])  # [texts, |V|]
    q = logq.exp()
    pairs = [(i, j) for i in range(len(p)) for j in range(len(texts))]  # targets first
    p_top, q_top = top_ids(p, top_k), top_ids(q, top_k)
    records = SimpleNamespace(p_top_ids=[p_top[i].numpy() for i, _ in pairs],
                              q_on_p_top=[q[j, p_top[i]].numpy() for i, j in pairs],
                              q_top_ids=[q_top[j].numpy() for _, j in pairs],
                              q_top_probs=[q[j, q_top[j]].numpy() for _, j in pairs])
    top = pl.from_arrow(pa.table(top_token_columns(records, [probs[i] for i, _ in pairs])))
    units = meta.column("entropy_unit").to_pylist()
    nats = kl(p[[i for i, _ in pairs]], logq[[j for _, j in pairs]])
    h = entropy(logq)
    rows = pl.DataFrame({
        "model": [loaded.name] * len(pairs),
        "target_id": [meta.column("target_id")[i].as_py() for i, _ in pairs],
        "text": [texts[j] for _, j in pairs],
        "prompt_ids": [encoded[j] for _, j in pairs],
        "bos_token_id": [bos_id] * len(pairs),
        "kl": [float(to_unit(float(nats[n]), units[i])) for n, (i, _) in enumerate(pairs)],
        "q_entropy": [float(to_unit(float(h[j]), units[i])) for i, j in pairs],
        "target_entropy": [meta.column("requested_entropy")[i].as_py() for i, _ in pairs],
        "target_entropy_achieved": [meta.column("achieved_entropy")[i].as_py() for i, _ in pairs],
        "entropy_unit": [units[i] for i, _ in pairs],
    }, schema_overrides={"prompt_ids": pl.List(pl.Int64), "bos_token_id": pl.Int64, "target_entropy": pl.Float64,
                         "target_entropy_achieved": pl.Float64}).hstack(top)
    return with_token_texts(rows, {loaded.name: vocab_table(loaded.tokenizer, loaded.vocab_size)})


def read_result(path: str | os.PathLike) -> "pl.DataFrame":
    """A result table (``distreach tune --out``, a collected or a tuning-job table), checked to
    have what :func:`target_vs_achieved` and :func:`generate` read."""
    import polars as pl

    from .io import read_arrow

    table = read_arrow(path)
    missing = [c for c in RESULT_NEEDS if c not in table.column_names]
    if missing and "logprobs" in table.column_names:
        raise DistreachError(f"{path}: a target table, not a result table; tune it first "
                             f"(distreach tune --model M --target {path} --out result.arrow)")
    if missing:
        raise DistreachError(f"{path}: not a result table of this version of distreach (no column(s) "
                             f"{', '.join(missing)}); tune it again")
    return pl.from_arrow(table)


def select_rows(df: "pl.DataFrame", where: str, target: str | None = None, init: int | None = None,
                method: str | None = None, model: str | None = None) -> "pl.DataFrame":
    """The rows of a result table with the given target id, init index, method and model name
    (each when given); an error naming what the table has when none matches."""
    import polars as pl

    for column, value, flag in (("model", model, "--model"), ("method", method, "--method"),
                                ("target_id", target, "--target"), ("init_index", init, "--init")):
        if value is None:
            continue
        sub = df.filter(pl.col(column) == value)
        if sub.is_empty():
            have = df[column].unique(maintain_order=True).to_list()
            shown = ", ".join(map(str, have[:8])) + (f" and {len(have) - 8} more" if len(have) > 8 else "")
            raise DistreachError(f"{flag} {value}: {where} has no such row ({column}: {shown})")
        df = sub
    return df


def _source_key(source: dict) -> str:
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:12]


def model_folders(row: dict, near: str | os.PathLike | None = None) -> list[Path]:
    """Where the model a result row was tuned on may already be materialised, in the order
    looked at: the workflow's ``results/models/<model>`` of the results folder ``near`` lies in,
    that of the working directory, and the model cache (the folder ``distreach tune`` converts
    the same source into)."""
    out = []
    if near is not None:
        for parent in Path(near).resolve().parents:
            if parent.name == "results":
                out.append(parent / "models" / row["model"])
                break
    out.append(Path.cwd() / "results" / "models" / row["model"])
    out += [_row_cache(row), _row_cache(row, FP32_SUFFIX)]
    return list(dict.fromkeys(p.resolve() for p in out))


# the cache folder beside a model's, of its weights stored in fp32: what a row tuned when every model
# was stored in fp32 names, where its source is a bf16 or fp16 checkpoint (models.exact_dtype)
FP32_SUFFIX = "-float32"


def _row_cache(row: dict, suffix: str = "") -> Path:
    """The cache folder of a row's model: where ``distreach tune`` converts the same source to."""
    return cache_dir() / f"{row['model']}-{_source_key(json.loads(row['model_source']))}{suffix}"


def _manifest(folder: Path) -> dict | None:
    from .models import MANIFEST

    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def row_tokenizer(row: dict, near: str | os.PathLike | None = None):
    """The tokenizer of the model a result row names, without loading weights: from a
    materialised folder of the same source (:func:`model_folders`); else a ``local`` or ``hf``
    source's own tokenizer; else (a GGUF) the model is converted into the cache first, as
    ``distreach tune`` does."""
    from transformers import AutoTokenizer

    source = json.loads(row["model_source"])
    for folder in model_folders(row, near):
        manifest = _manifest(folder)
        if manifest is not None and manifest.get("source") == source:
            return AutoTokenizer.from_pretrained(folder, trust_remote_code=bool(manifest.get("trust_remote_code")))
    if "local" in source and Path(source["local"]).is_dir():
        return AutoTokenizer.from_pretrained(source["local"])
    if "hf" in source:
        try:
            return AutoTokenizer.from_pretrained(source["hf"], revision=source.get("revision"))
        except Exception as exc:  # no hub access and nothing cached
            raise DistreachError(f"model {row['model']}: cannot load the tokenizer of {source['hf']} ({exc.__class__.__name__})") from None
    return _materialised_row_model(row, near, weights=False).tokenizer


def _materialised_row_model(row: dict, near, weights: bool, dtype: str = "fp32", device: str = "cpu"):
    """The materialised model of a row whose weights are the ones it was tuned with (its
    ``model_sha256``), converted into the cache if no folder of :func:`model_folders` has them."""
    import shutil

    import torch

    from .models import ModelSpec, load_materialised, materialise

    name, source, sha = row["model"], json.loads(row["model_source"]), row["model_sha256"]
    folders = model_folders(row, near)
    found = [f for f in folders if (m := _manifest(f)) is not None and m.get("weights_sha256") == sha]
    if not found:
        cache = _row_cache(row)
        if "random_init" in source or "local" in source and not Path(source["local"]).is_dir():
            where = ", ".join(str(f) for f in folders)
            fix = (f"its source folder {source['local']} is gone: put it back, or the row's model folder in one of these"
                   if "local" in source else "run the workflow's materialise_model for it")
            raise DistreachError(f"model {name}: no materialised folder with the weights the row was tuned on "
                                 f"(sha256 {sha[:12]}...) in {where}; {fix}")
        converted = _manifest(cache) is None
        if converted:
            materialise(ModelSpec(name, source), cache)
            log.info("converted %s into %s (once; later runs reuse it)", name, cache)
        held = _manifest(cache)
        if held["weights_sha256"] == sha:
            found = [cache]
        elif held.get("weights_dtype", "float32") != "float32":
            # a row tuned when every model was stored in fp32: the hash it names is of fp32 files
            fp32 = _row_cache(row, FP32_SUFFIX)
            materialise(ModelSpec(name, source), fp32, store=torch.float32)
            log.info("converted %s into %s in fp32, the files the row was tuned on", name, fp32)
            if _manifest(fp32)["weights_sha256"] == sha:
                found = [fp32]
            else:  # not the row's either: its source has other weights now
                shutil.rmtree(fp32)
        if not found:
            what = "converting its source gave" if converted else f"the cache folder {cache} holds"
            raise DistreachError(f"model {name}: {what} other weights (sha256 {held['weights_sha256'][:12]}...) than "
                                 f"the row was tuned on ({sha[:12]}...)")
    return load_materialised(found[0], dtype=dtype, device=device, with_model=weights)[0]


def row_model(row: dict, near: str | os.PathLike | None = None, dtype: str = "auto", device: str = "auto"):
    """The model a result row was tuned on, loaded (a LoadedModel) in the row's dtype unless
    ``dtype`` says otherwise; only a folder with the row's weights (``model_sha256``) is used."""
    from .models import resolve_device

    dev = resolve_device(device)
    return _materialised_row_model(row, near, True, row["dtype"] if dtype == "auto" else dtype, dev)


def target_vs_achieved(result: str | os.PathLike, target: str | None = None, init: int | None = None,
                       method: str | None = None, model: str | None = None) -> "pl.DataFrame":
    """The rows of a result table (filtered by target id, init index, method and model name)
    with the text of their target's and their achieved distribution's top tokens
    (``p_top_tokens``, ``q_top_tokens``; :func:`distreach.vocab.token_texts`), read with each
    model's tokenizer (:func:`row_tokenizer`)."""
    from .vocab import vocab_table, with_token_texts

    rows = select_rows(read_result(result), str(result), target, init, method, model)
    vocabs = {}
    for r in rows.unique("model", maintain_order=True).iter_rows(named=True):
        tok = row_tokenizer(r, result)
        vocabs[r["model"]] = vocab_table(tok, len(tok))
    return with_token_texts(rows, vocabs)


def generation_row(result: str | os.PathLike, target: str, init: int | None = None, method: str | None = None,
                   model: str | None = None) -> dict:
    """The one row of a result table :func:`generate` uses: the target's (and, when given, the
    init's, method's and model's) row, the init with the lowest ``kl_min`` when ``init`` is not
    given; an error when rows of several models, methods or experiments match."""
    import polars as pl

    rows = select_rows(read_result(result), str(result), target, init, method, model)
    for column, flag in (("model", "--model"), ("method", "--method"), ("experiment", None), ("prefix_len", None)):
        values = rows[column].unique(maintain_order=True).to_list()
        if len(values) > 1:
            hint = f"; choose one with {flag}" if flag else ""
            raise DistreachError(f"--target {target}: {result} has rows of {len(values)} {column} values "
                                 f"({', '.join(map(str, values))}){hint}")
    ok = rows.filter(pl.col("status") == "ok")
    if ok.is_empty():
        raise DistreachError(f"--target {target}: every matching row failed ({rows['status'][0]})")
    return ok.sort("kl_min", "init_index").row(0, named=True)


def generate(result: str | os.PathLike, target: str, init: int | None = None, text: str = "", max_new_tokens: int = 20,
             samples: int = 5, seed: int = 0, top: int = 10, method: str | None = None, model: str | None = None,
             dtype: str = "auto", device: str = "auto") -> dict:
    """Feed a result row's kept prompt (after its BOS policy's token, before ``text``) to the
    model it was tuned on: the next-token distribution's ``top`` tokens and ``samples``
    sampled continuations of up to ``max_new_tokens`` tokens (:func:`distreach.prompts.sample`).

    Returns ``row`` (the row used, :func:`generation_row`), ``next_tokens`` (a DataFrame: rank,
    token_id, token, q, and the target's p where the token is among its recorded top tokens),
    ``samples`` (the continuations' text) and ``kl``: KL(p || q) of this pass, in the row's
    unit, where the target's recorded top tokens hold all its mass (within 1e-6; a target of at
    most the tuning's ``top_k`` tokens, default 20), else None. Without ``text`` it is the kept prompt's KL
    computed anew, to set beside ``kl_min`` (the lowest value the tuning met: in bf16 a new pass
    rounds differently)."""
    import polars as pl

    from .prompts import Prompt, next_token_logprobs, sample
    from .vocab import token_texts, vocab_table

    if samples < 0 or max_new_tokens < 1 or top < 1:
        raise DistreachError("generate: samples must be >= 0, max_new_tokens and top >= 1")
    row = generation_row(result, target, init, method, model)
    prompt = Prompt.from_row(row)
    loaded = row_model(row, result, dtype, device)
    text_ids = loaded.tokenizer(text, add_special_tokens=False).input_ids if text else []
    loaded.check_positions((prompt.bos_id is not None) + prompt.prefix_len + len(text_ids) + (max_new_tokens - 1 if samples else 0),
                           "the prompt" + (" and --text" if text else "") + (" and the samples' tokens" if samples else ""))
    logq = next_token_logprobs(loaded, prompt, text_ids)
    q = logq.exp()
    best = q.topk(min(top, q.shape[0]))
    p_of = dict(zip(row["p_top_ids"], row["p_top_probs"]))
    ids = best.indices.tolist()
    table = pl.DataFrame({
        "rank": list(range(1, len(ids) + 1)),
        "token_id": ids,
        "token": token_texts(vocab_table(loaded.tokenizer, loaded.vocab_size), ids),
        "q": best.values.tolist(),
        "p": [p_of.get(i) for i in ids],
    }, schema={"rank": pl.Int64, "token_id": pl.Int64, "token": pl.String, "q": pl.Float64, "p": pl.Float64})
    seqs = sample(loaded, prompt, text_ids, samples=samples, max_new_tokens=max_new_tokens, seed=seed) if samples else []
    decoded = [loaded.tokenizer.decode(s, skip_special_tokens=False) for s in seqs]
    return {"row": row, "text": text, "next_tokens": table, "samples": decoded, "q_on_p_top": q[row["p_top_ids"]].tolist(),
            "kl": _recorded_kl(row, logq)}


def _recorded_kl(row: dict, logq) -> float | None:
    """KL(p || q) in the row's unit over the target's recorded top tokens, where they hold all of
    p's mass (within 1e-6), else None."""
    import torch

    from .infotheory import kl
    from .units import to_unit

    p = torch.tensor(row["p_top_probs"], dtype=torch.float64)
    if abs(float(p.sum()) - 1.0) > 1e-6:
        return None
    p = p / p.sum()  # the rounding of the stored probabilities: a KL is never below 0
    nats = kl(p[None], logq.double()[row["p_top_ids"]][None])
    return float(to_unit(float(nats[0]), row["entropy_unit"]))
