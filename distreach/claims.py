"""The paper's findings re-tested on a run's collected tables, each with its statistic, an
interval or p-value and a three-valued verdict from a stated rule.

Every statistic is on the minimum KL over inits of each target (rows with status ``ok``). The
data of each claim is the data of the figure that shows it (the config's ``figures`` section),
so a claim is tested on exactly what is drawn. Verdicts:

- ``holds``: the test concludes the claim at alpha = 0.05 (one-sided, in the claimed direction).
- ``does not hold``: there are enough targets for the test to conclude, and it does not (the
  statistic says whether the data point the other way or are merely not clear).
- ``inconclusive``: too few targets or levels for the test to reach p < 0.05 whatever the data
  (for example fewer than 5 pairs for a signed-rank test, fewer than 4 targets per group for a
  rank-sum test), or the data the claim needs are not configured.

A claim made of several comparisons holds when every comparison holds (an intersection-union
test, so each is at alpha without correction), does not hold when any comparison with enough
targets does not, and is inconclusive otherwise. Bootstraps resample targets (2000 resamples,
seeded, so a report is the same every time it is made from the same tables).

Rules:

- C1 (Fig. 1) soft min KL vs target entropy rises then falls. Needs >= 3 entropy levels and >= 2
  targets per level. Holds when (a) the level with the highest mean (the peak) is neither end;
  (b) the peak minus the higher of the two ends has a 95% bootstrap interval above 0; (c) KL rises
  up to the peak and falls after it (Spearman rho over the targets of those levels, one-sided
  p < 0.05 each); (d) no neighbouring levels reverse that direction by more than 2 standard
  errors of their difference. A monotone curve fails (a), a flat noisy one (b)/(c), a two-peaked
  one (d). Inconclusive when a side has too few targets for Spearman's test to reach p < 0.05
  even for a perfectly monotone side. Also reported: the share of bootstrap resamples whose mean
  curve has an interior peak above both ends and no 2-s.e. reversal.
- C2 (Fig. 1) near-zero loss with aligned entropy at low target entropy: at every level up to
  2 bits, the one-sided 95% t upper bound of the mean min KL is below 0.01 nats and that of the
  mean |H(q) - H(p)| below 0.1 nats (constants of this module, not the run's stop criterion;
  KL below the run's ``stop_kl_nats`` is not resolved, so a stop criterion above 0.01 nats makes
  this claim fail). Needs >= 2 targets at each such level.
- C3 (Fig. 4) more soft positions, lower loss: for methods ordered by their number of soft
  positions, each one's min KL is below the next one's on the same targets (Wilcoxon signed-rank,
  one-sided, paired by target; all methods start from the same init tokens).
- C4 (Fig. 7) outlier targets easier than vanilla targets of the same entropy: per (level, draw),
  the mean over k of the outlier targets' min KL against the vanilla target of that level and
  draw (Wilcoxon signed-rank, one-sided).
- C5 (Figs. 8, 9) LM-generated targets easier than their own entropy-matched vanilla targets,
  with soft prompts (Fig. 9) and hard ones (Fig. 8), and shuffled ones too (the minimum over a
  target's shuffled copies, as Fig. 9 reads them) with soft prompts: each against its matched
  target (Wilcoxon signed-rank, one-sided, paired by target).
- C6 (Fig. 10) migrated targets easier than their own matched vanilla targets, per tuning model
  (Wilcoxon signed-rank, one-sided, paired by target).
- C7 (Fig. 6) random-init twins also unimodal: the C1 rule on each twin.
- C8 (Fig. 13) instruction-tuned models have higher loss on POS-uniform targets than their base
  models (the ``pairs`` of figure fig13): paired by target (Wilcoxon signed-rank, one-sided).
- C9 (Fig. 13) adjectives are the easiest part of speech: ADJ targets' min KL below each other
  tag's (Mann-Whitney U, one-sided, per tag; targets of different tags are different draws).

Paired statistics: n pairs, median difference, 95% bootstrap interval of the mean difference,
the rank-biserial correlation r (effect size, -1..1; negative = the first lower) and the p-value.
"""

from __future__ import annotations

import html
import math
import re

import numpy as np
import polars as pl
from scipy import stats

from .figreg import figure_experiments
from .seeds import derive_seed
from .tables import min_over_inits

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
ALPHA = 0.05
N_BOOT = 2000
NEAR_ZERO_KL_NATS = 0.01
ENTROPY_GAP_NATS = 0.1
LOW_ENTROPY_BITS = 2.0
CLAIMS = {
    "C1": "soft min KL vs target entropy rises then falls (unimodal)",
    "C2": "near-zero min KL and aligned entropy up to 2 bits",
    "C3": "more soft positions, lower loss (soft < hybrid < hard)",
    "C4": "outlier targets easier than vanilla at moderate entropy",
    "C5": "LM-generated and shuffled targets easier than matched vanilla",
    "C6": "migrated targets easier than matched vanilla",
    "C7": "random-init twins also unimodal",
    "C8": "instruction-tuned variants have higher POS-uniform loss than their base",
    "C9": "adjectives are the easiest part of speech",
}


def _nats(value: float, unit: str) -> float:
    return value * math.log(2) if unit == "bits" else value


def _bits(value: float, unit: str) -> float:
    return value / math.log(2) if unit == "nats" else value


def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng(derive_seed("claims", *parts))


def combine(verdicts: list[str]) -> str:
    """Intersection-union: holds when all hold, does not hold when any does not."""
    if not verdicts:
        return INCONCLUSIVE
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def result(verdict: str, statistic: str, interval: str = "-", n: int | str = "-") -> dict:
    return {"verdict": verdict, "statistic": statistic, "interval": interval, "n": str(n)}


# ---------------------------------------------------------------- paired and two-sample tests

MIN_PAIRS = next(n for n in range(1, 64) if 0.5**n < ALPHA)  # exact signed-rank: min p = 2^-n
MIN_PER_GROUP = next(n for n in range(1, 64) if 1 / math.comb(2 * n, n) < ALPHA)  # rank-sum, equal n


def paired_less(a, b, label: str, seed) -> dict:
    """Is ``a`` below ``b`` on the same targets? One-sided Wilcoxon signed-rank test."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    n = len(d)
    nz = d[d != 0]  # ties carry no sign: the test can conclude only on the pairs that differ
    if len(nz) < MIN_PAIRS:
        return result(INCONCLUSIVE, f"{label}: {len(nz)} of {n} pairs differ (need {MIN_PAIRS})", n=n)
    p = float(stats.wilcoxon(a, b, alternative="less").pvalue)
    ranks = stats.rankdata(np.abs(nz))
    r = float((ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum())
    idx = _rng(label, *seed).integers(0, n, (N_BOOT, n))
    lo, hi = np.percentile(d[idx].mean(1), [2.5, 97.5])
    stat = f"{label}: median diff {np.median(d):.3g}, r = {r:+.2f}"
    return result(HOLDS if p < ALPHA else FAILS, stat, f"mean diff 95% CI [{lo:.3g}, {hi:.3g}]; p = {p:.2g}", n)


def rank_sum_less(a, b, label: str) -> dict:
    """Are ``a``'s values below ``b``'s (different targets)? One-sided Mann-Whitney U test."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if min(len(a), len(b)) < MIN_PER_GROUP:
        return result(INCONCLUSIVE, f"{label}: {len(a)} vs {len(b)} targets (need {MIN_PER_GROUP} each)", n=f"{len(a)}/{len(b)}")
    u = stats.mannwhitneyu(a, b, alternative="less")
    r = 2 * u.statistic / (len(a) * len(b)) - 1  # rank-biserial: -1 = every a below every b
    p = float(u.pvalue)
    stat = f"{label}: medians {np.median(a):.3g} vs {np.median(b):.3g}, r = {r:+.2f}"
    return result(HOLDS if p < ALPHA else FAILS, stat, f"p = {p:.2g}", f"{len(a)}/{len(b)}")


def merge(parts: list[dict]) -> dict:
    """Several comparisons as one claim row."""
    if not parts:
        return result(INCONCLUSIVE, "no comparison has data")
    return result(
        combine([p["verdict"] for p in parts]),
        "; ".join(p["statistic"] for p in parts),
        "; ".join(f"{p['interval']}" for p in parts),
        ", ".join(p["n"] for p in parts),
    )


def _pairs(left: pl.DataFrame, right: pl.DataFrame, key: str = "pair") -> tuple[np.ndarray, np.ndarray]:
    j = left.select(key, pl.col("kl_min").alias("a")).join(right.select(key, pl.col("kl_min").alias("b")), on=key).sort(key)
    return j["a"].to_numpy(), j["b"].to_numpy()


# ---------------------------------------------------------------- C1, C7: unimodal


def _levels(best: pl.DataFrame) -> tuple[list[float], list[np.ndarray]]:
    g = best.group_by("target_entropy").agg(pl.col("kl_min")).sort("target_entropy")
    return g["target_entropy"].to_list(), [np.asarray(v, float) for v in g["kl_min"].to_list()]


def _spearman(groups: list[np.ndarray], direction: str) -> tuple[float, float, float]:
    """rho and one-sided p over the pooled targets of consecutive levels, and the smallest p a
    perfectly monotone side with these counts could reach."""
    x = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)])
    y = np.concatenate(groups)
    res = stats.spearmanr(x, y, alternative=direction)
    ideal = np.arange(len(x)) * (1 if direction == "greater" else -1)
    best_p = stats.spearmanr(x, ideal, alternative=direction).pvalue
    rho = float(res.statistic) if np.isfinite(res.statistic) else 0.0
    p = float(res.pvalue) if np.isfinite(res.pvalue) else 1.0
    return rho, p, float(best_p)


def _reversals(means: np.ndarray, ses: np.ndarray, peak: int) -> list[int]:
    """Neighbouring levels i, i+1 that go against the rise (before the peak) or the fall (after it)
    by more than 2 standard errors of their difference."""
    out = []
    for i in range(len(means) - 1):
        d = means[i + 1] - means[i]
        se = math.hypot(ses[i], ses[i + 1])
        if (i < peak and d < -2 * se) or (i >= peak and d > 2 * se):
            out.append(i)
    return out


def _shape_ok(means: np.ndarray, ses: np.ndarray) -> bool:
    p = int(np.argmax(means))
    return 0 < p < len(means) - 1 and means[p] > max(means[0], means[-1]) and not _reversals(means, ses, p)


def unimodal(best: pl.DataFrame, unit: str, seed=()) -> dict:
    levels, groups = _levels(best)
    n = ", ".join(str(len(g)) for g in groups) or "0"
    if len(levels) < 3:
        return result(INCONCLUSIVE, f"{len(levels)} entropy levels (need 3)", n=n)
    if min(len(g) for g in groups) < 2:
        return result(INCONCLUSIVE, "a level has fewer than 2 targets (no standard error)", n=n)
    means = np.array([g.mean() for g in groups])
    ses = np.array([g.std(ddof=1) / math.sqrt(len(g)) for g in groups])
    peak = int(np.argmax(means))
    stat = f"peak {means[peak]:.3g} {unit} at H = {levels[peak]:.3g}; ends {means[0]:.3g} and {means[-1]:.3g}"
    rng = _rng("unimodal", *seed)
    boot_means = np.stack([g[rng.integers(0, len(g), (N_BOOT, len(g)))].mean(1) for g in groups], 1)
    boot_ses = np.stack([g.std(ddof=1) / math.sqrt(len(g)) * np.ones(N_BOOT) for g in groups], 1)
    share = float(np.mean([_shape_ok(m, s) for m, s in zip(boot_means, boot_ses)]))
    if peak in (0, len(levels) - 1):
        return result(FAILS, stat + f" (peak at an end); bootstrap: shape holds in {share:.0%}", "-", n)
    gap = boot_means[:, peak] - np.maximum(boot_means[:, 0], boot_means[:, -1])
    lo, hi = np.percentile(gap, [2.5, 97.5])
    up, down = groups[: peak + 1], groups[peak:]
    rho_up, p_up, best_up = _spearman(up, "greater")
    rho_down, p_down, best_down = _spearman(down, "less")
    rev = _reversals(means, ses, peak)
    stat += (
        f"; rise rho = {rho_up:+.2f}, fall rho = {rho_down:+.2f}; reversals > 2 s.e.: "
        + (", ".join(f"H {levels[i]:.3g}->{levels[i + 1]:.3g}" for i in rev) or "none")
        + f"; bootstrap: shape holds in {share:.0%}"
    )
    interval = f"peak - higher end 95% CI [{lo:.3g}, {hi:.3g}]; p rise = {p_up:.2g}, p fall = {p_down:.2g}"
    if rev:
        return result(FAILS, stat, interval, n)
    if max(best_up, best_down) >= ALPHA:
        return result(INCONCLUSIVE, stat + " (too few targets on a side for Spearman's test)", interval, n)
    ok = lo > 0 and rho_up > 0 and p_up < ALPHA and rho_down < 0 and p_down < ALPHA
    return result(HOLDS if ok else FAILS, stat, interval, n)


# ---------------------------------------------------------------- C2: near zero at low entropy


def near_zero(best: pl.DataFrame, unit: str, seed=()) -> dict:
    low = best.filter(pl.col("target_entropy") <= (LOW_ENTROPY_BITS if unit == "bits" else LOW_ENTROPY_BITS * math.log(2)) + 1e-9)
    levels, _ = _levels(low)
    if not levels:
        return result(INCONCLUSIVE, f"no level up to {LOW_ENTROPY_BITS:g} bits")
    parts, verdicts, counts = [], [], []
    for h in levels:
        at = low.filter(pl.col("target_entropy") == h)
        kl = np.array([_nats(v, unit) for v in at["kl_min"]])
        gap = np.array([_nats(abs(q - p), unit) for q, p in zip(at["q_entropy"], at["target_entropy_achieved"])])
        counts.append(str(len(kl)))
        if len(kl) < 2:
            verdicts.append(INCONCLUSIVE)
            parts.append(f"H = {h:.3g}: 1 target")
            continue
        t = stats.t.ppf(1 - ALPHA, len(kl) - 1)
        ub_kl = kl.mean() + t * kl.std(ddof=1) / math.sqrt(len(kl))
        ub_gap = gap.mean() + t * gap.std(ddof=1) / math.sqrt(len(gap))
        verdicts.append(HOLDS if ub_kl < NEAR_ZERO_KL_NATS and ub_gap < ENTROPY_GAP_NATS else FAILS)
        parts.append(f"H = {h:.3g}: KL {kl.mean():.2g} (95% upper {ub_kl:.2g}) nats, |H(q)-H(p)| {gap.mean():.2g} (upper {ub_gap:.2g}) nats")
    return result(
        combine(verdicts), "; ".join(parts),
        f"thresholds: KL < {NEAR_ZERO_KL_NATS} nats, |H(q)-H(p)| < {ENTROPY_GAP_NATS} nats", ", ".join(counts),
    )


# ---------------------------------------------------------------- C3-C6, C8, C9: comparisons


def method_order(sub: pl.DataFrame, unit: str, seed=()) -> dict:
    """C3: each method against the one with the next fewer soft positions, paired by target."""
    soft_n = dict(sub.group_by("method").agg(pl.col("n_soft").first()).iter_rows())
    order = sorted(soft_n, key=lambda m: -soft_n[m])
    if len(order) < 2:
        return result(INCONCLUSIVE, f"{len(order)} method(s) (need 2)")
    by = {m: sub.filter(pl.col("method") == m).with_columns(pair=pl.col("target_id")) for m in order}
    return merge([paired_less(*_pairs(by[a], by[b]), f"{a} < {b}", seed) for a, b in zip(order, order[1:])])


def _draw_index(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    return df.sort("target_id").with_columns(draw=pl.col("target_id").cum_count().over(by))


def outliers_easier(sub: pl.DataFrame, unit: str, seed=()) -> dict:
    """C4: per (level, draw), the mean over k of outlier min KL against the vanilla target's."""
    out = sub.filter(pl.col("target_kind") == "outlier")
    van = sub.filter(pl.col("target_kind") == "vanilla")
    if out.is_empty() or van.is_empty():
        return result(INCONCLUSIVE, "needs outlier and vanilla targets")
    k = ["n_outliers"] if "n_outliers" in out.columns else []
    out = _draw_index(out, ["target_entropy", *k]).group_by("target_entropy", "draw").agg(pl.col("kl_min").mean())
    van = _draw_index(van, ["target_entropy"])
    key = pl.format("{}/{}", pl.col("target_entropy"), pl.col("draw")).alias("pair")
    return paired_less(*_pairs(out.with_columns(key), van.with_columns(key)), "outlier < vanilla", seed)


def _base_id(col: str = "target_id") -> pl.Expr:
    return pl.col(col).str.replace(r"^matched-", "").str.replace(r"-shuffled\d+$", "")


def _against_matched(sub: pl.DataFrame, kind: str, label: str, seed) -> dict | None:
    own = sub.filter(pl.col("target_kind") == kind)
    matched = sub.filter(pl.col("target_kind") == "matched").with_columns(pair=_base_id())
    if own.is_empty() and matched.is_empty():
        return None
    own = own.with_columns(pair=_base_id()).group_by("pair").agg(pl.col("kl_min").min())  # min over shuffles
    return paired_less(*_pairs(own, matched), label, seed)


def lm_easier(sub: pl.DataFrame, unit: str, seed=()) -> dict:
    """C5: lm and shuffled (soft), lm (hard), each against its own matched vanilla target."""
    parts = []
    for method, kinds in (("soft", ("lm", "shuffled")), ("hard", ("lm",))):
        m = sub.filter(pl.col("method") == method)
        for kind in kinds:
            if m.filter(pl.col("target_kind") == kind).is_empty():
                continue
            parts.append(_against_matched(m, kind, f"{method}: {kind} < matched", seed) or {})
    return merge([p for p in parts if p])


def migrated_easier(sub: pl.DataFrame, unit: str, seed=()) -> dict:
    """C6: migrated against its own matched vanilla target."""
    got = _against_matched(sub, "migrated", "migrated < matched", seed)
    return got or result(INCONCLUSIVE, "needs migrated and matched targets")


def instruct_harder(sub: pl.DataFrame, base: str, instruct: str, seed=()) -> dict:
    """C8: base below its instruction-tuned variant on the same POS-uniform targets."""
    key = pl.col("target_id").alias("pair")
    b = sub.filter(pl.col("model") == base).with_columns(key)
    i = sub.filter(pl.col("model") == instruct).with_columns(key)
    return paired_less(*_pairs(b, i), f"{base} < {instruct}", seed)


def adjectives_easiest(sub: pl.DataFrame, unit: str, seed=()) -> dict:
    """C9: ADJ targets against each other tag's."""
    if "pos" not in sub.columns or "ADJ" not in set(sub["pos"]):
        return result(INCONCLUSIVE, "no ADJ targets")
    others = sorted(set(sub["pos"]) - {"ADJ"})
    adj = sub.filter(pl.col("pos") == "ADJ")["kl_min"]
    return merge([rank_sum_less(adj, sub.filter(pl.col("pos") == t)["kl_min"], f"ADJ < {t}") for t in others])


# ---------------------------------------------------------------- the report


def _soft_vanilla(best: pl.DataFrame) -> pl.DataFrame:
    return best.filter((pl.col("method") == "soft") & (pl.col("target_kind") == "vanilla"))


def _soft(best: pl.DataFrame) -> pl.DataFrame:
    return best.filter(pl.col("method") == "soft")


def check(df: pl.DataFrame, figures: dict, twins: dict | None = None) -> pl.DataFrame:
    """One row per (claim, model): claim, finding, model, figure, n, statistic, interval, verdict."""
    unit = df["entropy_unit"][0] if df.height else "nats"
    twin_models = sorted(set((twins or {}).values()))
    pos_pairs = (figures.get("fig13") or {}).get("pairs") or {}

    def table(figs):
        exps = [e for f in figs if figures.get(f) for e in figure_experiments(figures[f])]
        sub = df.filter(pl.col("experiment").is_in(exps))
        return min_over_inits(sub) if not sub.is_empty() else None

    # (claim, figures whose data it uses, rows it looks at, rule, models: None = every model there)
    plan = [
        ("C1", ["fig01"], _soft_vanilla, unimodal, None),
        ("C2", ["fig01"], _soft_vanilla, near_zero, None),
        ("C3", ["fig04"], None, method_order, None),
        ("C4", ["fig07"], _soft, outliers_easier, None),
        ("C5", ["fig08", "fig09"], None, lm_easier, None),
        ("C6", ["fig10"], _soft, migrated_easier, None),
        ("C7", ["fig06"], _soft_vanilla, unimodal, twin_models),
        ("C8", ["fig13"], _soft, None, None),
        ("C9", ["fig13"], _soft, adjectives_easiest, None),
    ]
    rows = []
    for claim, figs, select, rule, models in plan:
        best = table(figs)
        where = ", ".join(figs)
        if best is not None and select is not None:
            best = select(best)
        if best is None or models == []:
            found = [("-", result(INCONCLUSIVE, f"{' and '.join(figs)} {'is' if len(figs) == 1 else 'are'} not configured"))]
        elif claim == "C8":
            found = [(f"{b} vs {i}", instruct_harder(best, b, i, (claim, b, i))) for b, i in pos_pairs.items()]
            found = found or [("-", result(INCONCLUSIVE, "no base/instruct pairs in figures.fig13.pairs"))]
        else:
            names = models if models is not None else sorted(best["model"].unique())
            found = [(m, rule(best.filter(pl.col("model") == m), unit, (claim, m))) for m in names]
        for model, res in found:
            rows.append({"claim": claim, "finding": CLAIMS[claim], "model": model, "figure": where, **res})
    return pl.DataFrame(rows).select("claim", "finding", "model", "figure", "n", "statistic", "interval", "verdict")


COLUMNS = ("claim", "finding", "model", "n", "statistic", "interval")


def to_markdown(claims: pl.DataFrame) -> str:
    lines = [
        "| claim | finding | model | n | statistic | interval or p | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in claims.iter_rows(named=True):
        cells = " | ".join(str(r[c]).replace("|", "\\|") for c in COLUMNS)
        lines.append(f"| {cells} | **{r['verdict']}** |")
    return "\n".join(lines) + "\n"


def rules_text() -> str:
    return (__doc__ or "").split("\n\n", 1)[1].strip()


def write_report(claims: pl.DataFrame, md_path, html_path) -> None:
    """The claims table as Markdown and as a standalone HTML page, each written atomically."""
    from .io import atomic_path

    rules = rules_text()
    md = "# The paper's findings on this run\n\n" + to_markdown(claims) + "\nHow the verdicts are reached (distreach.claims):\n\n" + rules + "\n"
    with atomic_path(md_path) as tmp:
        tmp.write_text(md)
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in COLUMNS)
        + f"<td class='{re.sub(' ', '-', r['verdict'])}'><b>{html.escape(r['verdict'])}</b></td></tr>\n"
        for r in claims.iter_rows(named=True)
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>distreach: the paper's findings on this run</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
.holds{{background:#e6f4ea}}.does-not-hold{{background:#fce8e6}}.inconclusive{{background:#f1f3f4}}</style></head>
<body><h1>The paper's findings on this run</h1>
<table><tr><th>claim</th><th>finding</th><th>model</th><th>n</th><th>statistic</th><th>interval or p</th><th>verdict</th></tr>
{cells}</table><h2>How the verdicts are reached</h2><pre>{html.escape(rules)}</pre></body></html>
"""
    with atomic_path(html_path) as tmp:
        tmp.write_text(page)
