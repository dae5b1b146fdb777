"""Fig. 3's data: entropy does not fix a distribution's shape.

On one model: its next-token distribution after a short text (the paper: Llama-3.2-1B after
"I love"), an Eq. 1 target of exactly that entropy (:func:`distreach.targets.entropy_matched_targets`),
and optionally the distribution a soft prompt tuned on that target produces (the best of its
inits, fed back through its kept prompt). One table row per distribution, with its full
log-probabilities and the text of its most probable tokens.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pyarrow as pa
import torch

from .engine import TuneConfig, tuning_context
from .errors import DistreachError
from .infotheory import entropy, kl, to_unit
from .io import package_versions, with_metadata
from .prompts import Prompt, next_token_logprobs
from .targets import logprobs, pad_rows, target_probs
from .vanilla import VanillaSettings, entropy_matched_targets
from .tokens import bos_used, resolve_bos
from .units import DEFAULT_UNIT
from .vocab import token_texts, vocab_table

DISTRIBUTIONS = ("lm", "vanilla", "tuned")


def text_distribution(loaded, text: str, bos_id: int | None) -> tuple[list[int], torch.Tensor]:
    """The token ids of ``text`` and the model's next-token log-probabilities after them (after
    the BOS token ``bos_id``, None for none: :func:`distreach.tokens.resolve_bos`), renormalised
    over |V| (padding rows past the tokenizer get probability 0, as for LM-generated targets)."""
    ids = loaded.tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise DistreachError(f"figures.fig03.text: {text!r} has no tokens for model {loaded.name}")
    loaded.check_positions(len(ids) + (bos_id is not None), f"figures.fig03.text {text[:40]!r}")
    logq = next_token_logprobs(loaded, None, ids, bos_id)
    support = loaded.support
    out = torch.full_like(logq, float("-inf"))
    out[:support] = torch.log_softmax(logq[:support], -1)
    return ids, out


def shapes_table(loaded, text: str, unit: str = DEFAULT_UNIT, seed: int = 0, bos: str = "auto", tuning: TuneConfig | None = None,
                 inits: int = 1, top: int = 10) -> pa.Table:
    """Fig. 3's distributions on ``loaded`` (see the module doc): rows ``lm``, ``vanilla`` and,
    with ``tuning`` (soft prompts; its BOS policy is ``bos``), ``tuned``. Columns:
    ``distribution``, ``name`` and ``label`` (short, and with entropy and KL: the figure's
    words), ``entropy`` (in ``unit``), ``kl`` (KL(vanilla || this) in ``unit``; null
    for the LM's), ``top_ids`` and ``top_tokens`` (the ``top`` most probable tokens and their
    text), ``logprobs`` (float32, |V| output rows); provenance in the schema metadata. The BOS
    token is resolved once, for the text and (in the tuning's context) the soft prompt."""
    from .tuning import tune_rows

    tok = loaded.tokenizer
    cfg = None if tuning is None else replace(tuning, method="soft", n_soft=None, soft_positions=None, bos=bos)
    ctx = None if cfg is None else tuning_context(loaded, cfg)
    bos_id = resolve_bos(tok.bos_token_id, bos, loaded.name) if ctx is None else ctx.bos_id
    ids, lm = text_distribution(loaded, text, bos_id)
    h = float(to_unit(entropy(lm), unit))
    # the Eq. 1 target over |V| (no mass on padding rows), of the LM distribution's entropy
    vanilla = pad_rows(entropy_matched_targets(loaded.support, [h], ["fig03-vanilla"], unit, VanillaSettings(seed=seed),
                                               kind="vanilla"), loaded.vocab_size)
    rows = {"lm": lm, "vanilla": torch.from_numpy(logprobs(vanilla)[0].copy())}
    meta = {"model": loaded.manifest, "text": text, "text_ids": ids, "unit": unit, "seed": seed,
            "bos": bos_used(bos_id), "bos_policy": bos, "packages": package_versions()}
    if ctx is not None:
        t_meta, probs = target_probs(vanilla, loaded.vocab_size)
        result = tune_rows(ctx, t_meta, probs, experiment="fig03", method="soft", tuning=cfg, inits=inits, seed=seed)
        ok = [r for r in result.to_pylist() if r["status"] == "ok"]
        if not ok:
            raise DistreachError(f"fig03: tuning a soft prompt on the Eq. 1 target failed ({result.column('status')[0]})")
        best = min(ok, key=lambda r: (r["kl_min"], r["init_index"]))
        rows["tuned"] = next_token_logprobs(loaded, Prompt.from_row(best))
        meta["tuning"] = asdict(cfg)
        meta["tuned"] = {k: best[k] for k in ("init_index", "init_seed", "kl_min", "q_entropy", "best_step", "steps",
                                              "stop_reason", "dtype")}
    vocab = vocab_table(tok, loaded.vocab_size)
    p = torch.exp(rows["vanilla"])[None]
    names = list(rows)
    logp = torch.stack([rows[n] for n in names])
    tops = [torch.sort(lp, descending=True, stable=True).indices[:top].tolist() for lp in logp]
    ent = to_unit(entropy(logp).numpy(), unit)
    kls = [None if n == "lm" else float(to_unit(kl(p, logp[i : i + 1]), unit)) for i, n in enumerate(names)]
    short = {"lm": f"{loaded.name} after {json.dumps(text, ensure_ascii=False)}", "vanilla": "Eq. 1 target",
             "tuned": "soft prompt tuned on the Eq. 1 target"}
    labels = [f"{short[n]} (H = {h:.2f} {unit}" + (f", KL from the target {k:.2f} {unit})" if n == "tuned" else ")")
              for n, h, k in zip(names, ent, kls)]
    table = pa.table({
        "distribution": pa.array(names, pa.string()),
        "name": pa.array([short[n] for n in names], pa.string()),
        "label": pa.array(labels, pa.string()),
        "entropy": pa.array(ent, pa.float64()),
        "entropy_unit": pa.array([unit] * len(names), pa.string()),
        "kl": pa.array(kls, pa.float64()),
        "top_ids": pa.array(tops, pa.list_(pa.int64())),
        "top_tokens": pa.array([token_texts(vocab, t) for t in tops], pa.list_(pa.string())),
        "logprobs": pa.FixedSizeListArray.from_arrays(pa.array(logp.numpy().astype(np.float32).reshape(-1)), logp.shape[1]),
    })
    return with_metadata(table, meta)


def write_shapes(model_dir, out, *, text: str, unit: str, seed: int, tuning: dict, tune: bool = True, inits: int = 1,
                 top: int = 10, dtype: str = "auto", device: str = "auto") -> pa.Table:
    """:func:`shapes_table` of the materialised model in ``model_dir`` (loaded in ``dtype`` on
    ``device``), written atomically to ``out``; ``tuning`` are the config's tuning settings
    (its ``bos`` policy goes before the text and, with ``tune``, the soft prompt's settings:
    :func:`distreach.settings.soft_tuning`)."""
    from .io import write_arrow
    from .models import auto_dtype, load_materialised, resolve_device
    from .settings import soft_tuning

    cfg = soft_tuning(tuning)
    device = resolve_device(device)
    loaded, _ = load_materialised(model_dir, dtype=auto_dtype(device) if dtype == "auto" else dtype, device=device)
    table = shapes_table(loaded, text, unit, seed, cfg.bos, cfg if tune else None, inits, top)
    write_arrow(table, out)
    return table
