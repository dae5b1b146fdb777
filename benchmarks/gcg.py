"""The gcg method against the paper's hard method and against nanoGCG, on SmolLM2-135M.

``hard``: the capitals target of the README and ``--lm`` LM-generated targets of SmolLM2 (the
study's ``lm`` family settings: the model's next-token distribution after 10 random tokens), prompts
of 5 tokens. gcg runs one init per target for ``--steps`` steps of ``--width`` candidates; its
forward passes per target are counted as steps x (1 + width), an upper bound (candidates that
are not readable text are not evaluated). The paper's hard method (argmin of the linear score, the
study's stopping rule) gets the same number of forward passes per target as restarts: inits are
run in order from the same first init seed as gcg (the same tokens, unless gcg redrew them to be
readable text), and its KL is the minimum
over the inits whose cumulative steps fit in gcg's budget (a hard step is one forward and one
backward pass, so hard gets at least as much compute). Soft prompts (one init, same first tokens)
show the gap a discrete search could close. Every gcg prompt is checked to be text that gives its
KL when typed back in.

``nanogcg``: ``--targets`` one-token targets (a one-hot p: KL(p || q) is the cross-entropy loss
nanoGCG minimises), ``--seeds`` runs per target, each from its own init seed; no BOS token
(nanoGCG's input is the prompt then the target), prompts of 5 tokens, a run starting from the same
text on both sides, the same steps, search width, top-k and positions changed, so the same number
of candidate forward passes (nanoGCG 0.3.0 with ``use_prefix_cache`` off, there being no prefix,
and ``allow_non_ascii`` on, as gcg draws from every usable token). nanoGCG tunes one run at a
time; gcg all of them in one batch. Both final prompts are scored by the same exact forward pass.
The two searches are one algorithm with different random draws, and a single run's final loss
scatters widely: the comparison is per target (the median over its seeds), then the median over
targets, with a sign test over the runs paired by target and seed. Needs ``pip install --no-deps nanogcg==0.3.0`` (its pin on
transformers<=4.47.1 is stricter than the code it runs needs).

``steps``: gcg alone on the targets of ``hard``, from the same init seeds, for ``--steps`` steps
(default 300, 5x the comparison's budget) with no patience: each LM target's lowest KL by every
``--every`` steps (default 60, the comparison's budget), and what a patience rule would have
stopped at (the step and the KL by then, from each row's own curve, with the engine's
``min_delta``); then the same search run with the paper's patience and with gcg's own. With
``gcg-hard.json`` under ``--out``, the summary sets the medians against the bar :func:`bar_verdict`
names (gcg's median KL over the LM targets at most a quarter of hard's at equal nominal forward
passes).

``context``: what the LM targets' own inputs give. Each LM target is the model's next-token
distribution after BOS and 10 random tokens; typed in whole, they give KL 0 (a check that the inputs
are those the targets were made from). Their last k tokens alone (after BOS) give each target's KL
for k = 1..10: at k = 5, the comparison's prompt length, a 5-token hard prompt that exists for every
target, set (with ``gcg-hard.json`` under ``--out``) against gcg's and hard's medians and the bar.

``cache``: how much faster a step's candidates are scored from the prompts' cached positions than
by whole forward passes (the same candidates, the two interleaved).

    python benchmarks/gcg.py hard --out benchmarks/results/cpu        # about 12 min on 2 Zen 4 cores, 45 on 2 AVX2 ones
    python benchmarks/gcg.py nanogcg --out benchmarks/results/cpu    # about 20 min on 2 Zen 4 cores
    python benchmarks/gcg.py steps --out benchmarks/results/cpu       # about 25 min on 2 Zen 4 cores
    python benchmarks/gcg.py cache --out benchmarks/results/cpu       # about 3 min
    python benchmarks/gcg.py context --out benchmarks/results/cpu     # about 20 s

Each writes ``gcg-<kind>.json`` under ``--out`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binom, binomtest

from distreach import api
from distreach.engine import TuneConfig, is_gain, prompt_kl, tune
from distreach.families import lm_generated, lm_prompts
from distreach.gcg import is_text
from distreach.io import atomic_path, package_versions
from distreach.models import machine
from distreach.seeds import derive_seed
from distreach.settings import GCG_PATIENCE, PATIENCE
from distreach.tuning import hard_prompt_columns
from distreach.targets import target_probs
from distreach.units import to_unit

CAPITALS = {" Paris": 0.5, " London": 0.2, " Berlin": 0.1, " Rome": 0.1, " Madrid": 0.1}  # the README's target
ONE_TOKEN = [" Paris", " cat", " blue", " seven", " water", " happy", " music", " king", " river", " table",
             " green", " money"]
PREFIX_LEN = 5
LM_PROMPT_LEN = 10  # the random tokens an LM target is made after (the study's lm family settings)


def bits(nats) -> np.ndarray:
    return to_unit(np.asarray(nats, dtype=float), "bits")


def load():
    torch.manual_seed(0)
    return api.load_model("smollm2", dtype="fp32", device="cpu")


def study_targets(loaded, n_lm: int) -> tuple[list[str], np.ndarray]:
    """The capitals target and n_lm LM-generated ones: ids and [n, |V|] probabilities."""
    _, cap = target_probs(api.token_target(CAPITALS, loaded, "capitals"), loaded.vocab_size)
    lm = lm_generated(loaded, n_lm, prompt_len=LM_PROMPT_LEN, unit="bits", seed=0)
    _, lmp = target_probs(lm, loaded.vocab_size)
    return ["capitals", *lm.column("target_id").to_pylist()], np.concatenate([cap, lmp])


def hard_at_budget(loaded, probs, seeds0, budget: int, cfg: TuneConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Per target: min KL over the hard inits (in order, the first from seeds0) whose cumulative
    steps fit in ``budget``, the KL of the first init alone, and the hard rows run."""
    n = len(probs)
    kls, used, done, rows, k = [[] for _ in range(n)], np.zeros(n, dtype=int), np.zeros(n, dtype=bool), 0, 0
    while not done.all():
        open_ = np.flatnonzero(~done)
        per = max(1, math.ceil((budget - used[open_].min()) / 30))  # a hard init runs about 30 steps or more
        idx = [int(t) for t in open_ for _ in range(per)]
        seeds = [seeds0[t] if k == 0 and j == 0 else derive_seed(seeds0[t], "restart", k, j) for t in open_ for j in range(per)]
        res = tune(loaded, probs[idx], seeds, cfg)
        rows += len(idx)
        for r, t in enumerate(idx):
            if done[t]:
                continue
            if used[t] + res.steps[r] > budget:
                done[t] = True  # this init does not fit: the target's budget is spent
                continue
            used[t] += res.steps[r]
            kls[t].append(res.kl_min[r])
        k += 1
    if not all(kls):
        raise SystemExit(f"a budget of {budget} forward passes is smaller than one hard init: raise --steps or --width")
    return np.array([min(v) for v in kls]), np.array([v[0] for v in kls]), rows


def gcg_setup(args) -> tuple:
    """What ``hard`` and ``steps`` run gcg on: SmolLM2, the capitals and LM targets (ids and
    probabilities), their init seeds, and gcg's settings (no patience before ``--steps``)."""
    loaded = load()
    ids, probs = study_targets(loaded, args.lm)
    seeds = [derive_seed(0, "init", t, 0) for t in ids]
    cfg = TuneConfig(method="gcg", prefix_len=PREFIX_LEN, max_steps=args.steps, patience=args.steps,
                     gcg_width=args.width, gcg_topk=args.topk)
    return loaded, ids, probs, seeds, cfg


def run_hard(args) -> dict:
    loaded, ids, probs, seeds, gcg_cfg = gcg_setup(args)
    t0 = time.perf_counter()
    g = tune(loaded, probs, seeds, gcg_cfg)
    gcg_s = time.perf_counter() - t0
    text = hard_prompt_columns(loaded, gcg_cfg, g, probs)
    roundtrip = [is_text(loaded.tokenizer, row) for row in g.best_ids.tolist()]
    budget = args.steps * (1 + args.width)
    hard_cfg = TuneConfig(method="hard", prefix_len=PREFIX_LEN, max_steps=500)
    t0 = time.perf_counter()
    hard_best, hard_first, hard_rows = hard_at_budget(loaded, probs, seeds, budget, hard_cfg)
    hard_s = time.perf_counter() - t0
    soft = tune(loaded, probs, seeds, TuneConfig(method="soft", prefix_len=PREFIX_LEN, max_steps=500, stop_kl_nats=0.001))
    rows = [{"target": t, "gcg_bits": float(bits(g.kl_min[i])), "gcg_roundtrip_bits": float(bits(text["kl_roundtrip"][i])),
             "gcg_is_text": roundtrip[i], "gcg_prompt": text["text"][i], "hard_bits": float(bits(hard_best[i])),
             "hard_first_init_bits": float(bits(hard_first[i])), "soft_bits": float(bits(soft.kl_min[i]))}
            for i, t in enumerate(ids)]
    lm_rows = rows[1:]
    med = {k: float(np.median([r[k] for r in lm_rows])) for k in ("gcg_bits", "hard_bits", "hard_first_init_bits", "soft_bits")}
    return {
        "kind": "hard", "model": "smollm2", "dtype": "fp32", "prefix_len": PREFIX_LEN, "gcg_steps": args.steps,
        "gcg_width": args.width, "gcg_topk": args.topk, "forward_passes_per_target": budget, "hard_rows": hard_rows,
        "gcg_seconds": gcg_s, "hard_seconds": hard_s, "rows": rows, "lm_median": med,
        "lm_median_ratio_hard_over_gcg": med["hard_bits"] / med["gcg_bits"],
        "capitals_ratio_hard_over_gcg": rows[0]["hard_bits"] / rows[0]["gcg_bits"],
        "max_roundtrip_diff_bits": float(max(abs(r["gcg_bits"] - r["gcg_roundtrip_bits"]) for r in rows)),
        "all_text": all(roundtrip), "versions": package_versions(), "threads": torch.get_num_threads(),
    }


CONTEXT_SHOWN = (1, 2, 3, 4, 5, 6, 8, 10)  # the suffix lengths the context table shows (the JSON holds all)
PATIENCES = tuple(sorted({PATIENCE, GCG_PATIENCE, 60, 100}))  # simulated; the engine's two also run


def patience_stop(curve: np.ndarray, patience: int, min_delta: float) -> tuple[int, float]:
    """The steps a row with this KL ``curve`` (one value per step) runs under the engine's
    patience rule (its :func:`distreach.engine.is_gain`), and its lowest KL by then."""
    best, since = math.inf, 0
    for step, kl in enumerate(curve):
        since = 0 if is_gain(kl, best, min_delta) else since + 1
        best = min(best, kl)
        if since >= patience:
            return step + 1, best
    return len(curve), best


def lowest_reached(rows: list[dict], patience: str, last: str) -> int:
    """How many ``rows`` of a ``steps`` run a search stopped by ``patience`` leaves at the lowest
    KL of the whole run (step ``last``)."""
    return sum(r["patience"][patience]["best_bits"] <= r["best_bits_by_step"][last] for r in rows)


def run_steps(args) -> dict:
    if args.steps % args.every:
        raise SystemExit(f"--steps {args.steps}: must be a multiple of --every {args.every}")
    loaded, ids, probs, seeds, cfg = gcg_setup(args)
    t0 = time.perf_counter()
    g = tune(loaded, probs, seeds, cfg, record_curve=True)
    seconds = time.perf_counter() - t0
    curve = bits(g.curve)  # [targets, steps]: each step's KL
    best = np.fmin.accumulate(curve, axis=1)  # NaN (a stopped row's steps) ignored
    marks = list(range(args.every, args.steps + 1, args.every))
    rows = [{"target": t, "best_bits_by_step": {str(m): float(best[i, m - 1]) for m in marks},
             "last_gain_step": int(np.nanargmin(curve[i])) + 1,  # the first step at the run's lowest KL
             "patience": {str(P): dict(zip(("steps", "best_bits"), patience_stop(curve[i], P, cfg.min_delta)))
                          for P in PATIENCES}}
            for i, t in enumerate(ids)]
    ran_seconds = {}
    for P in (PATIENCE, GCG_PATIENCE):  # the same search run with each default patience, rows leaving the batch as they stop
        t0 = time.perf_counter()
        ran = tune(loaded, probs, seeds, replace(cfg, patience=P))
        ran_seconds[str(P)] = time.perf_counter() - t0
        for i, r in enumerate(rows):
            r["patience"][str(P)].update(ran_steps=int(ran.steps[i]), ran_best_bits=float(bits(ran.kl_min[i])))
    lm = rows[1:]
    out = {"kind": "steps", "model": "smollm2", "dtype": "fp32", "prefix_len": PREFIX_LEN, "gcg_steps": args.steps,
           "gcg_width": args.width, "gcg_topk": args.topk, "every": args.every, "min_delta": cfg.min_delta,
           "forward_passes_per_step": 1 + args.width, "candidates": g.work["candidates"], "seconds": seconds,
           "ran_seconds": ran_seconds, "rows": rows,
           "lm_median_by_step": {str(m): float(np.median([r["best_bits_by_step"][str(m)] for r in lm])) for m in marks},
           "lm_median_by_patience": {str(P): {k: float(np.median([r["patience"][str(P)][k] for r in lm]))
                                              for k in ("steps", "best_bits", "ran_steps", "ran_best_bits")
                                              if k in lm[0]["patience"][str(P)]} for P in PATIENCES},
           "versions": package_versions(), "threads": torch.get_num_threads()}
    hard = args.out / "gcg-hard.json"
    if hard.exists():
        h = json.loads(hard.read_text())
        out["hard"] = {"file": hard.name, "gcg_steps": h["gcg_steps"], "gcg_width": h["gcg_width"],
                       "lm_median_bits": h["lm_median"]["hard_bits"],
                       "lm_median_first_init_bits": h["lm_median"]["hard_first_init_bits"],
                       "gcg_lm_median_bits": h["lm_median"]["gcg_bits"], "capitals_hard_bits": h["rows"][0]["hard_bits"]}
    return out


def run_context(args) -> dict:
    loaded = load()
    ids, probs = study_targets(loaded, args.lm)
    ids, probs = ids[1:], probs[1:]  # the LM targets
    prompts, _, bos_id = lm_prompts(loaded, args.lm, LM_PROMPT_LEN, seed=0)  # as study_targets' lm_generated drew them
    tokens = [x[x.numel() - LM_PROMPT_LEN:].tolist() for x in prompts]  # after the BOS
    lengths = range(1, LM_PROMPT_LEN + 1)
    with torch.no_grad():
        kl = {k: bits(prompt_kl(loaded, probs, [t[-k:] for t in tokens])) for k in lengths}
    rows = [{"target": t, "tokens": tokens[i], "bits_by_suffix": {str(k): float(kl[k][i]) for k in lengths}}
            for i, t in enumerate(ids)]
    out = {"kind": "context", "model": "smollm2", "dtype": "fp32", "prefix_len": PREFIX_LEN, "lm_prompt_len": LM_PROMPT_LEN,
           "bos": bos_id, "rows": rows, "median_by_suffix": {str(k): float(np.median(kl[k])) for k in lengths},
           "versions": package_versions(), "threads": torch.get_num_threads()}
    hard = args.out / "gcg-hard.json"
    if hard.exists():
        h = json.loads(hard.read_text())
        gcg_bits = {r["target"]: r["gcg_bits"] for r in h["rows"]}
        out["hard"] = {"file": hard.name, "lm_median_bits": h["lm_median"]["hard_bits"],
                       "gcg_lm_median_bits": h["lm_median"]["gcg_bits"],
                       "gcg_below_suffix": sum(gcg_bits[r["target"]] < r["bits_by_suffix"][str(PREFIX_LEN)] for r in rows)}
    return out


def one_token_probs(loaded, words) -> tuple[list[int], np.ndarray]:
    tok = loaded.tokenizer
    ids = []
    for w in words:
        enc = tok(w, add_special_tokens=False).input_ids
        if len(enc) != 1:
            raise SystemExit(f"{w!r} is not one token of SmolLM2")
        ids.append(enc[0])
    probs = np.zeros((len(ids), loaded.vocab_size), np.float32)
    probs[np.arange(len(ids)), ids] = 1.0
    return ids, probs


def run_nanogcg(args) -> dict:
    import nanogcg

    loaded = load()
    words = ONE_TOKEN[: args.targets]
    ids, probs = one_token_probs(loaded, words)
    runs = [(t, s) for t in range(len(words)) for s in range(args.seeds)]  # (target, seed index)
    seeds = [derive_seed(0, "init", words[t], s) for t, s in runs]
    run_probs = probs[[t for t, _ in runs]]
    cfg = TuneConfig(method="gcg", prefix_len=PREFIX_LEN, max_steps=args.steps, patience=args.steps,
                     gcg_width=args.width, gcg_topk=args.topk, bos="none")
    t0 = time.perf_counter()
    g = tune(loaded, run_probs, seeds, cfg)
    ours_s = time.perf_counter() - t0
    tok, model = loaded.tokenizer, loaded.model
    tok.chat_template = "{{ messages[0]['content'] }}"  # the prompt alone, then the target
    ng_loss, ng_ids, ng_s = [], [], 0.0
    for i, (t, _) in enumerate(runs):
        init = tok.decode(g.init_ids[i].tolist())
        ncfg = nanogcg.GCGConfig(num_steps=args.steps, search_width=args.width, topk=args.topk, n_replace=1,
                                 optim_str_init=init, seed=int(seeds[i]) % 2**31, use_prefix_cache=False,
                                 allow_non_ascii=True, verbosity="WARNING")
        t0 = time.perf_counter()
        r = nanogcg.run(model, tok, "", words[t], ncfg)
        ng_s += time.perf_counter() - t0
        ng_ids.append(tok(r.best_string, add_special_tokens=False).input_ids)
        ng_loss.append(r.best_loss)
    ng_exact = prompt_kl(loaded, run_probs, ng_ids, bos="none")
    ours_exact = prompt_kl(loaded, run_probs, g.best_ids.tolist(), bos="none")
    forwards = args.steps * (1 + args.width) * len(runs)  # per side, at most (unreadable candidates are skipped)
    rows = [{"target": words[t], "seed_index": s, "gcg_nats": float(ours_exact[i]), "nanogcg_nats": float(ng_exact[i]),
             "nanogcg_reported_loss": float(ng_loss[i]), "nanogcg_prompt_tokens": len(ng_ids[i])}
            for i, (t, s) in enumerate(runs)]
    return {
        "kind": "nanogcg", "model": "smollm2", "dtype": "fp32", "prefix_len": PREFIX_LEN, "steps": args.steps,
        "search_width": args.width, "topk": args.topk, "targets": len(words), "seeds": args.seeds, "rows": rows,
        "comparison": comparison(rows), "gcg_seconds": ours_s, "nanogcg_seconds": ng_s, "forward_passes_bound": forwards,
        "gcg_ms_per_forward": 1000 * ours_s / forwards, "nanogcg_ms_per_forward": 1000 * ng_s / forwards,
        "versions": {**package_versions(), "nanogcg": nanogcg.__version__ if hasattr(nanogcg, "__version__") else "0.3.0"},
        "threads": torch.get_num_threads(),
    }


def _by_target(rows: list[dict]) -> dict[str, list[dict]]:
    """The runs of each target (in order of first appearance); every target needs the same number
    of runs, and every loss must be finite."""
    out = {}
    for r in rows:
        out.setdefault(r["target"], []).append(r)
    if not out or len({len(rs) for rs in out.values()}) != 1:
        raise ValueError(f"the comparison needs the same number of runs per target, got {[len(rs) for rs in out.values()]}")
    if not all(math.isfinite(r[k]) for r in rows for k in ("gcg_nats", "nanogcg_nats")):
        raise ValueError("a run's final loss is not finite: the comparison is of finite losses")
    return out


def per_target(rows: list[dict]) -> list[dict]:
    """Per target: each side's median loss over its seeds, the median over its seeds of the paired
    differences (gcg minus nanoGCG, run by run) and the runs where gcg ends lower."""
    return [{"target": t, "gcg_nats": float(np.median([r["gcg_nats"] for r in rs])),
             "nanogcg_nats": float(np.median([r["nanogcg_nats"] for r in rs])),
             "diff_nats": float(np.median([r["gcg_nats"] - r["nanogcg_nats"] for r in rs])),
             "gcg_lower": sum(r["gcg_nats"] < r["nanogcg_nats"] for r in rs), "runs": len(rs)}
            for t, rs in _by_target(rows).items()]


def median_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """An interval for the median of the distribution ``values`` are independent draws from, from
    their order statistics (distribution-free): ``[x_(k), x_(n+1-k)]`` for the largest k whose
    coverage ``1 - 2 P(Binomial(n, 1/2) <= k - 1)`` is at least ``level``; returns (low, high,
    coverage). Fewer than 6 values hold no such 95% interval: (-inf, inf, 1)."""
    x, n = np.sort(np.asarray(values, dtype=float)), len(values)
    cover = lambda k: 1 - 2 * float(binom.cdf(k - 1, n, 0.5))
    k = max((k for k in range(1, n // 2 + 1) if cover(k) >= level), default=0)
    return (float(x[k - 1]), float(x[n - k]), cover(k)) if k else (-math.inf, math.inf, 1.0)


def sign_test(lower: int, higher: int) -> float:
    """The two-sided exact binomial p-value of ``lower`` against ``higher`` (ties left out)."""
    return float(binomtest(lower, lower + higher, 0.5).pvalue) if lower + higher else 1.0


def paired(rows: list[dict]) -> dict:
    """The comparison, paired by target and seed, targets the independent units: each side's median
    over targets of its per-target medians (the table's last row, unpaired); the median over
    targets of the per-target paired differences (gcg minus nanoGCG) with its distribution-free
    interval (:func:`median_interval`); and a sign test over the targets' differences."""
    by_target = per_target(rows)
    diffs = [r["diff_nats"] for r in by_target]
    lo, hi, cover = median_interval(diffs)
    lower, higher = sum(d < 0 for d in diffs), sum(d > 0 for d in diffs)
    return {"gcg_median_nats": float(np.median([r["gcg_nats"] for r in by_target])),
            "nanogcg_median_nats": float(np.median([r["nanogcg_nats"] for r in by_target])),
            "median_diff_nats": float(np.median(diffs)), "median_diff_interval": [lo, hi], "interval_coverage": cover,
            "targets_gcg_lower": lower, "targets_nanogcg_lower": higher, "sign_test_p": sign_test(lower, higher),
            "runs_gcg_lower": sum(r["gcg_nats"] < r["nanogcg_nats"] for r in rows)}


def comparison(rows: list[dict]) -> dict:
    """:func:`paired`, or what keeps the runs from being compared (the runs are kept either way)."""
    try:
        return paired(rows)
    except ValueError as e:
        return {"error": str(e)}


def run_cache(args) -> dict:
    """Candidate scoring from the prompts' cached positions against whole forward passes (the
    scoring before it), interleaved on the same candidates: 11 rows of 5 tokens, ``--width``
    candidates each changing one position (as gcg_replace 1 draws them)."""
    from distreach.engine import tuning_context
    from distreach.gcg import GCGBatch

    loaded = load()
    rows = 11
    cfg = TuneConfig(method="gcg", prefix_len=PREFIX_LEN, gcg_width=args.width, readable=False)
    ctx = tuning_context(loaded, cfg)
    gen = torch.Generator().manual_seed(0)
    pool = ctx.allowed.nonzero().flatten()
    probs = torch.softmax(3 * torch.randn(rows, loaded.vocab_size, generator=gen), -1)
    ids = pool[torch.randint(0, len(pool), (rows, PREFIX_LEN), generator=gen)]
    batch = GCGBatch(ctx, probs, ids, cfg, False, list(range(rows)), [0])
    flat = ids.repeat_interleave(args.width, 0)
    at = torch.arange(len(flat))
    flat[at, torch.randint(0, PREFIX_LEN, (len(flat),), generator=gen)] = pool[torch.randint(0, len(pool), (len(flat),), generator=gen)]
    ok, of = torch.ones(len(flat), dtype=torch.bool), torch.arange(rows).repeat_interleave(args.width)
    chunk = max(4 * rows, batch.PASS)

    def whole():
        with torch.no_grad():
            return torch.cat([batch.losses(batch.embed(flat[i: i + chunk]), of[i: i + chunk])[0] for i in range(0, len(flat), chunk)])

    times = {"whole": [], "cached": []}
    for rep in range(args.reps + 1):  # the first of each is a warm-up, not timed
        for name, fn in (("whole", whole), ("cached", lambda: batch.candidate_losses(flat, ok, torch.arange(rows)))):
            t0 = time.perf_counter()
            out = fn()
            if rep:
                times[name].append(time.perf_counter() - t0)
            if rep == 0 and name == "whole":
                ref = out
    diff = float((batch.candidate_losses(flat, ok, torch.arange(rows)) - ref.float()).abs().max())
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"kind": "cache", "model": "smollm2", "dtype": "fp32", "prefix_len": PREFIX_LEN, "rows": rows,
            "width": args.width, "reps": args.reps, "seconds": times, "median_seconds": med,
            "speedup": med["whole"] / med["cached"], "max_abs_diff_nats": diff, "versions": package_versions(),
            "threads": torch.get_num_threads()}


def table(res: dict) -> str:
    if res["kind"] == "context":
        ks = [k for k in res["median_by_suffix"] if int(k) in CONTEXT_SHOWN]
        lines = ["| target | " + " | ".join(f"last {k} token{'s' if k != '1' else ''} (bits)" for k in ks) + " |",
                 "|---|" + "---|" * len(ks)]
        lines += [f"| {r['target']} | " + " | ".join(f"{max(r['bits_by_suffix'][k], 0.0):.3f}" for k in ks) + " |" for r in res["rows"]]
        lines.append("| median | " + " | ".join(f"{max(res['median_by_suffix'][k], 0.0):.3f}" for k in ks) + " |")
        return "\n".join(lines)
    if res["kind"] == "cache":
        m = res["median_seconds"]
        return "\n".join(["| scoring | median s per step's candidates |", "|---|---|",
                          f"| whole forward passes | {m['whole']:.2f} |", f"| from cached positions | {m['cached']:.2f} |"])
    if res["kind"] == "steps":
        marks = list(res["lm_median_by_step"])
        lines = ["| target | " + " | ".join(f"lowest KL by step {m} (bits)" for m in marks) + " | last step that lowered it |",
                 "|---|" + "---|" * (len(marks) + 1)]
        lines += [f"| {r['target']} | " + " | ".join(f"{r['best_bits_by_step'][m]:.3f}" for m in marks) +
                  f" | {r['last_gain_step']} |" for r in res["rows"]]
        lines.append(f"| median of the {len(res['rows']) - 1} LM targets | " +
                     " | ".join(f"{res['lm_median_by_step'][m]:.3f}" for m in marks) + " | |")
        lines += ["", f"| patience (steps without a gain) | median steps (LM targets) | median lowest KL (bits) | "
                      f"LM targets at their lowest KL of all {marks[-1]} steps | a run with it: median steps | "
                      f"a run with it: median lowest KL (bits) |", "|---|---|---|---|---|---|"]
        for P, v in res["lm_median_by_patience"].items():
            ran = (f"{v['ran_steps']:g} | {v['ran_best_bits']:.3f}") if "ran_steps" in v else "- | -"
            lines.append(f"| {P} | {v['steps']:g} | {v['best_bits']:.3f} | {lowest_reached(res['rows'][1:], P, marks[-1])} "
                         f"of {len(res['rows']) - 1} | {ran} |")
        return "\n".join(lines)
    if res["kind"] == "hard":
        lines = ["| target | gcg (bits) | hard at equal forwards (bits) | hard, first init (bits) | soft (bits) | gcg prompt |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {r['target']} | {r['gcg_bits']:.3f} | {r['hard_bits']:.3f} | {r['hard_first_init_bits']:.3f} | "
                  f"{r['soft_bits']:.4f} | {json.dumps(r['gcg_prompt'], ensure_ascii=False)} |" for r in res["rows"]]
        m = res["lm_median"]
        lines.append(f"| median of the {len(res['rows']) - 1} LM targets | {m['gcg_bits']:.3f} | {m['hard_bits']:.3f} | "
                     f"{m['hard_first_init_bits']:.3f} | {m['soft_bits']:.4f} | |")
        return "\n".join(lines)
    c = _compared(res)
    lines = ["| target | gcg loss (nats), median over seeds | nanoGCG loss (nats), median over seeds | "
             "paired difference (nats), median over seeds | runs gcg ends lower |", "|---|---|---|---|---|"]
    lines += [f"| {json.dumps(r['target'])} | {r['gcg_nats']:.3f} | {r['nanogcg_nats']:.3f} | {r['diff_nats']:+.3f} | "
              f"{r['gcg_lower']} of {r['runs']} |" for r in per_target(res["rows"])]
    lines.append(f"| median over targets | {c['gcg_median_nats']:.3f} | {c['nanogcg_median_nats']:.3f} | "
                 f"{c['median_diff_nats']:+.3f} | {c['runs_gcg_lower']} of {len(res['rows'])} |")
    return "\n".join(lines)


def summary(res: dict) -> str:
    """The result in a few sentences, for benchmarks/README.md."""
    m = res["machine"]
    where = (f" Measured on {m['cpu']}, {m['cores']} cores, {'with' if m['native_bf16'] else 'without'} native bf16, "
             f"{res['dtype']}, {res['threads']} torch threads.")
    return _findings(res) + where


def _findings(res: dict) -> str:
    if res["kind"] == "steps":
        return _steps_findings(res)
    if res["kind"] == "context":
        return _context_findings(res)
    if res["kind"] == "cache":
        return (f"Scoring the {res['rows'] * res['width']} candidates of a step ({res['rows']} rows of {res['prefix_len']} "
                f"tokens, {res['width']} candidates each, one position changed) from the prompts' cached positions: "
                f"{res['speedup']:.2f}x faster than whole forward passes (median of {res['reps']} interleaved repeats), "
                f"largest difference in KL {res['max_abs_diff_nats']:.1g} nats.")
    if res["kind"] == "hard":
        return (f"Median over the {len(res['rows']) - 1} LM targets: gcg {res['lm_median']['gcg_bits']:.3g} bits, hard at "
                f"equal forward passes {res['lm_median']['hard_bits']:.3g} bits ({res['lm_median_ratio_hard_over_gcg']:.1f}x); "
                f"capitals: {res['rows'][0]['gcg_bits']:.3g} against {res['rows'][0]['hard_bits']:.3g} bits "
                f"({res['capitals_ratio_hard_over_gcg']:.1f}x). Every gcg prompt is text that gives its KL typed back in: "
                f"{res['all_text']} (largest difference {res['max_roundtrip_diff_bits']:.1g} bits). "
                f"{res['forward_passes_per_target']} forward passes per target; hard ran {res['hard_rows']} inits "
                f"(those past a target's budget run but not counted). "
                f"Against the first hard init (gcg's seed): {res['lm_median']['hard_first_init_bits']:.3g} bits, "
                f"{res['lm_median']['hard_first_init_bits'] / res['lm_median']['gcg_bits']:.1f}x. Wall time: gcg "
                f"{res['gcg_seconds']:.0f} s for its {len(res['rows'])} rows, the hard restarts {res['hard_seconds']:.0f} s.")
    c = _compared(res)
    lo, hi = c["median_diff_interval"]
    return (f"Over {res['targets']} one-token targets, {res['seeds']} seeds each, paired by target and seed: the median "
            f"over targets of the paired difference (gcg minus nanoGCG, per target the median over its seeds) is "
            f"{c['median_diff_nats']:+.2f} nats, {c['interval_coverage']:.1%} interval {lo:+.2f} to {hi:+.2f} "
            f"(distribution-free, from the targets' order statistics); the difference is negative on "
            f"{c['targets_gcg_lower']} targets, positive on {c['targets_nanogcg_lower']} (sign test p = "
            f"{c['sign_test_p']:.2g}). {_verdict(c)} Wall time per candidate forward pass (at most "
            f"{res['forward_passes_bound']} each), with gcg's {len(res['rows'])} runs in one batch: gcg "
            f"{res['gcg_ms_per_forward']:.2f} ms, nanoGCG {res['nanogcg_ms_per_forward']:.2f} ms "
            f"({res['nanogcg_ms_per_forward'] / res['gcg_ms_per_forward']:.1f}x).")


def _context_findings(res: dict) -> str:
    n, full, k = len(res["rows"]), res["lm_prompt_len"], res["prefix_len"]
    whole = max(abs(r["bits_by_suffix"][str(full)]) for r in res["rows"])
    said = (f"Each of the {n} LM targets after its own {full} random tokens: KL at most {whole:.1g} bits (the inputs it "
            f"was made from). Their last {k} tokens alone, a {k}-token prompt for every target: median "
            f"{res['median_by_suffix'][str(k)]:.3g} bits")
    if "hard" in res:
        h = res["hard"]
        said += (f", against gcg's {h['gcg_lm_median_bits']:.3g} and hard's {h['lm_median_bits']:.3g} at equal forward "
                 f"passes ({h['file']}); gcg ends below its target's own last {k} tokens on {h['gcg_below_suffix']} of "
                 f"{n}. The bar (a quarter of hard's: {h['lm_median_bits'] / 4:.3g} bits) lies below what the targets' "
                 f"own last {k} tokens give on the median by a factor of "
                 f"{res['median_by_suffix'][str(k)] / (h['lm_median_bits'] / 4):.1f}")
    return said + "."


def bar_verdict(by_step: dict, hard_median: float, hard_first_median: float) -> tuple[float, float, bool]:
    """Against the bar of gcg's median KL over the LM targets at least 4x lower than hard's at
    equal nominal forward passes (steps x (1 + width) for gcg, an upper bound), from gcg's medians
    of its lowest KL ``by_step`` (the first mark at hard's budget) and hard's medians at that
    budget and of its first init alone: the most gcg may have at budgets from the first mark's to
    the last's (a quarter of hard's, taking hard's minimum over the more inits of a larger budget to
    be no higher), the
    most the ratio can be below the first mark's budget (hard at most its first init, gcg at
    least its value at the first mark), and whether the bar is missed at every such budget."""
    marks = list(by_step)
    quarter = hard_median / 4
    ratio_below = hard_first_median / by_step[marks[0]]
    return quarter, ratio_below, by_step[marks[-1]] > quarter and ratio_below < 4


def _steps_findings(res: dict) -> str:
    by, n = res["lm_median_by_step"], len(res["rows"]) - 1
    marks = list(by)
    pat = res["lm_median_by_patience"]
    first, last = marks[0], marks[-1]
    text = (f"gcg's median over the {n} LM targets, its lowest KL by step " + ", ".join(f"{m}: {by[m]:.3g}" for m in marks) +
            f" bits (at most {res['forward_passes_per_step']} forward passes a step, {res['seconds']:.0f} s for the "
            f"{len(res['rows'])} rows). Stopped by patience (steps without a gain of {res['min_delta']:g} of the best), "
            f"read from each row's curve: " +
            ", ".join(f"{P} steps: {v['best_bits']:.3g} bits after a median {v['steps']:g} steps" for P, v in pat.items()) +
            "; run with it (rows leave the batch as they stop, so the batch's passes round differently): " +
            ", ".join(f"{P} steps: {v['ran_best_bits']:.3g} bits after a median {v['ran_steps']:g} steps"
                      for P, v in pat.items() if "ran_steps" in v) + ".")
    h = res.get("hard")
    if h and int(first) == h["gcg_steps"] and res["gcg_width"] == h["gcg_width"] and by[first] == h["gcg_lm_median_bits"]:
        quarter, ratio_below, missed = bar_verdict(by, h["lm_median_bits"], h["lm_median_first_init_bits"])
        cap = res["rows"][0]["best_bits_by_step"][first]
        text += (f" Against a bar of gcg 4x lower than hard at equal nominal forward passes, on the median over the LM "
                 f"targets ({h['file']}: hard's "
                 f"median {h['lm_median_bits']:.3g} bits at the budget of step {first}, its first init's "
                 f"{h['lm_median_first_init_bits']:.3g}): at any budget from step {first}'s to step {last}'s gcg would need "
                 f"at most {quarter:.3g} bits (a quarter of hard's, taking its minimum over the more inits of a larger "
                 f"budget to be no higher) "
                 f"and its median is {by[last]:.3g} at step {last}; below step {first}'s budget (and past hard's first init) "
                 f"the ratio is at most hard's first init over gcg at step {first}, {ratio_below:.1f}x. "
                 + ("On the LM targets' median the bar is not met at any of these budgets in this run"
                    if missed else "These runs do not rule the bar out on the LM targets' median")
                 + f" (the capitals target: {h['capitals_hard_bits'] / cap:.1f}x at step {first}'s budget).")
    return text


def _compared(res: dict) -> dict:
    c = res["comparison"]
    if "error" in c:
        raise SystemExit(f"the runs could not be compared: {c['error']}")
    return c


def _verdict(c: dict) -> str:
    """What the interval of :func:`paired`'s comparison ``c`` shows about gcg against nanoGCG."""
    lo, hi = c["median_diff_interval"]
    if not math.isfinite(lo - hi):
        return "Too few targets for a 95% interval: nothing is shown."
    if lo > 0:
        return "The interval lies above 0: gcg ends higher (worse)."
    if hi < 0:
        return "The interval lies below 0: gcg ends lower (better)."
    return (f"The interval holds 0: these runs do not tell the two apart; the median per-target difference may lie "
            f"anywhere from {lo:+.2f} to {hi:+.2f} nats, so 'no worse' is not shown.")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("hard", "nanogcg", "cache", "steps", "context"))
    p.add_argument("--out", type=Path, required=True, help="folder for gcg-<kind>.json")
    p.add_argument("--steps", type=int, default=None, help="gcg steps (default: hard 60, nanogcg 20, steps 300)")
    p.add_argument("--every", type=int, default=60, help="steps: report the lowest KL by every this many steps (default 60)")
    p.add_argument("--width", type=int, default=32, help="candidates per step (default 32)")
    p.add_argument("--topk", type=int, default=256, help="tokens per position candidates draw from (default 256)")
    p.add_argument("--lm", type=int, default=10, help="hard, steps, context: LM-generated targets (default 10)")
    p.add_argument("--targets", type=int, default=10, help="nanogcg: one-token targets (default 10)")
    p.add_argument("--seeds", type=int, default=5, help="nanogcg: runs per target, each from its own init seed (default 5)")
    p.add_argument("--reps", type=int, default=5, help="cache: timed repeats of each scoring (default 5)")
    args = p.parse_args(argv)
    args.steps = args.steps or {"hard": 60, "nanogcg": 20, "steps": 300}.get(args.kind)
    run = {"hard": run_hard, "nanogcg": run_nanogcg, "cache": run_cache, "steps": run_steps, "context": run_context}[args.kind]
    res = {**run(args), "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / f"gcg-{args.kind}.json") as tmp:
        Path(tmp).write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    print(table(res))
    print(summary(res))


if __name__ == "__main__":
    main()
