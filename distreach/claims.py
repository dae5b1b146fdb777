"""The paper's findings re-tested on a run's collected tables, each with its statistic, p-value and
one of four outcomes (:mod:`distreach.verdicts`): holds, contradicted, not shown (with the minimum
detectable effect) or too few data.

Every statistic is on the minimum KL over inits of each target (rows with status ``ok``), in the
table's entropy unit. The data of each claim is the data of the figure that shows it (the config's
``figures`` section), so a claim is tested on exactly what is drawn. One-sided tests at alpha =
0.05; a claim made of several comparisons holds when all hold (intersection-union) and is
contradicted when one concludes the opposite at alpha / k. Each row also gives its p-value
adjusted by Holm over all the report's rows of the paper's claims (the family-wise view), and how its rows stopped
tuning (step cap, patience, stop threshold; median steps; dtypes): when more than 10% of a
claim's rows ran into the step cap, the verdict may reflect the optimisation budget. Permutation
tests and simulations are seeded, so a report is the same every time it is made from the same
tables. Each rule's calibration (how often it says holds when its claim is false, at the least
favourable case) is measured by simulation in ``tests/test_calibration.py``.

Rules:

- C1 (Fig. 1) soft min KL rises with target entropy up to a point, then falls. The targets,
  ordered by entropy, are dealt alternately into two halves (two targets per level: one in each
  half; one per level: every other level). One half picks the peak (its level with the highest
  mean); the other half tests it: KL rises up to the peak and falls after it (Spearman's rank
  correlation by permutation, one-sided, each side; both must conclude). Both ways round, the
  smaller p doubled (Bonferroni). The peak is never tested on the data that chose it, so a curve
  that rises and then stays flat says holds at most 5% of the time. Contradicted: an end level's
  targets are above those of the interior level with the highest mean (Welch's t, one-sided,
  either end at alpha / 2). MDE: the height of the peak above the straight line joining the end
  levels' means (curves of the observed shape scaled to other heights, with the observed scatter
  of targets about their level's mean, 100 seeded simulations per height); sizes for 80% power are
  searched up to 8 targets per level. Too few data: no choice of peak lets both sides reach
  p < alpha / 2 (at least 3 levels).
- C2 (Fig. 1) near-zero loss with aligned entropy at low target entropy: the levels up to 2 bits,
  in bins of consecutive levels holding at least 5 targets each; in every bin the median min KL
  is below 5% of the model's Fig. 1 peak (the highest level mean above 2 bits: the scale on which
  the paper shows "near zero", from targets not tested here) and the median |H(q) - H(p)| below 5%
  of the highest target entropy (log |V|, the scale of Fig. 5): exact sign tests, an equivalence
  test (holds: below the threshold; contradicted: above it).
- C3 (Fig. 4) more soft positions, lower loss: for the paper's methods (not gcg) ordered by
  their number of soft positions, each one's min KL is below the next one's on the same targets
  (Wilcoxon signed-rank, paired by target; all methods start from the same init tokens).
- C4 (Fig. 7) outlier targets easier than vanilla targets of the same entropy: within each (level,
  draw), the vanilla target's rank among it and the outlier targets (one per k); the sum of ranks
  against its exact permutation distribution.
- C5 (Figs. 8, 9) LM-generated targets easier than their own entropy-matched vanilla targets, with
  soft prompts (Fig. 9) and hard ones (Fig. 8), and their shuffled copies too with soft prompts:
  LM against matched by Wilcoxon signed-rank, paired by target; shuffled copies by the matched
  target's rank among it and the target's copies (exact permutation distribution; every copy
  counts, so more copies do not make holds more likely: Fig. 9 draws the minimum over copies, a
  test must not).
- C6 (Fig. 10) migrated targets easier than their own matched vanilla targets, per tuning model
  (Wilcoxon signed-rank).
- C7 (Fig. 6) random-init copies also unimodal: the C1 rule on each copy (``figures.fig06.pairs``).
- C8 (Fig. 13) instruction-tuned variants have higher loss on POS-uniform targets than their base
  models (``figures.fig13.pairs``): Wilcoxon signed-rank, paired by target.
- C9 (Fig. 13) adjectives are the easiest part of speech: ADJ targets' min KL below each other
  tag's (Mann-Whitney U per tag; targets of different tags are different draws).

- G1 (Fig. 4; ours, not the paper's) a GCG search for readable hard prompts (method ``gcg``)
  reaches lower loss than the paper's hard method on the same targets, each method's first init
  (the same init tokens, except where those are not text and gcg starts from a readable redraw):
  Wilcoxon signed-rank, paired by target; the statistic adds the share of the soft-hard gap it
  closes, sum(hard - gcg) / sum(hard - soft) over the targets. A gcg step evaluates many candidate
  prompts: the comparison is at each method's own settings, not at equal compute. Its p-value is
  not in the Holm family of the paper's claims.

MDEs of the rank tests are normal-theory approximations (the t-test's, scaled by the rank test's
asymptotic efficiency), in the claim's unit; the statistic column names what each one measures.
"""

from __future__ import annotations

import html
import math
from dataclasses import replace

import numpy as np
import polars as pl
from scipy import stats

from .figureregistry import FIGURES, claim_figures, figure_experiments
from .units import from_unit, to_unit
from .io import atomic_path
from .seeds import derive_seed
from .tables import min_over_inits, source_ids
from .verdicts import (ALPHA, CONTRADICTED, HOLDS, MIN_PAIRS, NOT_SHOWN, OUTCOMES, POWER, TOO_FEW, Test, combine, holm,
                       missing, paired_less, rank_sum_less, rank_within, sign_below, sizes_text, trend_min_p, trend_p,
                       PERM_MAX_N)

__all__ = ["check", "write_report", "OUTCOMES", "HOLDS", "CONTRADICTED", "NOT_SHOWN", "TOO_FEW"]

LOW_ENTROPY_BITS = 2.0  # C2: "low entropy" is up to this many bits
NEAR_ZERO_SHARE = 0.05  # C2: "near zero" is below this share of the figure's scale
BUDGET_SHARE = 0.10  # a claim whose rows ran into the step cap more often than this may reflect the budget
CLAIMS = {
    "C1": "soft min KL vs target entropy rises then falls (unimodal)",
    "C2": "near-zero min KL and aligned entropy up to 2 bits",
    "C3": "more soft positions, lower loss (soft < hybrid < hard)",
    "C4": "outlier targets easier than vanilla at moderate entropy",
    "C5": "LM-generated and shuffled targets easier than matched vanilla",
    "C6": "migrated targets easier than matched vanilla",
    "C7": "random-init copies also unimodal",
    "C8": "instruction-tuned variants have higher POS-uniform loss than their base",
    "C9": "adjectives are the easiest part of speech",
    "G1": "ours, not the paper's: a GCG search closes some of the soft-hard gap (gcg < hard)",
}


def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng(derive_seed("claims", *parts))


def _pairs(left: pl.DataFrame, right: pl.DataFrame, key: str = "pair") -> tuple[np.ndarray, np.ndarray]:
    j = left.select(key, pl.col("kl_min").alias("a")).join(right.select(key, pl.col("kl_min").alias("b")), on=key).sort(key)
    return j["a"].to_numpy(), j["b"].to_numpy()


# ---------------------------------------------------------------- C1, C7: unimodal


def halves(n: int) -> np.ndarray:
    """Half (0 or 1) of each of n targets ordered by (entropy, target id): dealt alternately."""
    return np.arange(n) % 2


def _peak(h: np.ndarray, y: np.ndarray) -> float:
    """The entropy level with the highest mean of y (the lowest such level on a tie)."""
    levels = np.unique(h)
    means = [y[h == v].mean() for v in levels]
    return float(levels[int(np.argmax(means))])


def split_p(h: np.ndarray, y: np.ndarray, rng, b: int | None = None) -> tuple[float, list[tuple[float, float, float]]]:
    """C1's p-value: each half picks the peak, the other tests rise and fall; the smaller p of the
    two ways doubled. Also (peak, p rise, p fall) of each way."""
    half = halves(len(h))
    kw = {} if b is None else {"b": b}
    ways = []
    for sel in (0, 1):
        s, t = half == sel, half != sel
        peak = _peak(h[s], y[s])
        up, down = t & (h <= peak), t & (h >= peak)
        ways.append((peak, trend_p(h[up], y[up], True, rng, **kw), trend_p(h[down], y[down], False, rng, **kw)))
    return min(1.0, 2 * min(max(pr, pf) for _, pr, pf in ways)), ways


def _split_min_p(h: np.ndarray) -> float:
    """The smallest p-value :func:`split_p` can give for these entropies, over every peak."""
    half = halves(len(h))
    best, floor = 1.0, trend_min_p([0.0, 1.0] * (PERM_MAX_N + 1))  # no p is below the floor
    for sel in (0, 1):
        t = half != sel
        for peak in np.unique(h[half == sel]):
            best = min(best, max(trend_min_p(h[t & (h <= peak)]), trend_min_p(h[t & (h >= peak)])))
            if best <= floor:
                return min(1.0, 2 * best)
    return min(1.0, 2 * best)


def _end_above_p(levels: np.ndarray, groups: list[np.ndarray]) -> float:
    """Contradiction of C1: an end level above the interior level with the highest mean (Welch's
    t, one-sided), the smaller p of the two ends doubled; 1 where a group has fewer than 2 targets."""
    if len(levels) < 3:
        return 1.0
    inner = max(groups[1:-1], key=lambda g: g.mean())
    ps = [stats.ttest_ind(end, inner, equal_var=False, alternative="greater").pvalue
          if min(len(end), len(inner)) >= 2 else 1.0 for end in (groups[0], groups[-1])]
    ps = [p if np.isfinite(p) else 1.0 for p in ps]
    return min(1.0, 2 * min(ps))


def _residuals(h: np.ndarray, y: np.ndarray, levels: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Scatter of targets around the curve: about their level's mean, or, with one target per
    level, about the median of it and its neighbours."""
    res = y - means[np.searchsorted(levels, h)]
    if np.any(res != 0):
        return res
    smooth = np.array([np.median(means[max(0, i - 1): i + 2]) for i in range(len(means))])
    return means - smooth


class Hump:
    """C1's effect and its simulation: the curve of level means as the straight line joining its
    end levels plus a hump; the effect is the hump's height (the highest level mean above that
    line). Curves with the observed shape and another height, with the observed scatter of
    targets around their level's mean, give the power of C1's rule at that height."""

    SIMS = 100

    def __init__(self, h: np.ndarray, y: np.ndarray, rng):
        self.levels = np.unique(h)
        self.means = np.array([y[h == v].mean() for v in self.levels])
        lv, m = self.levels, self.means
        self.line = m[0] + (m[-1] - m[0]) * (lv - lv[0]) / (lv[-1] - lv[0])
        bump = m - self.line
        self.height = float(bump.max())
        self.shape = bump / self.height if self.height > 0 else np.zeros_like(bump)
        self.per_level = max(1, round(len(h) / len(lv)))
        self.res = _residuals(h, y, lv, m)
        if len(h) > len(lv):  # about the level means, which took one degree of freedom per level
            self.res = self.res * math.sqrt(len(h) / (len(h) - len(lv)))
        self.rng = rng

    def power(self, height: float, per_level: int | None = None) -> float:
        k = per_level or self.per_level
        h = np.repeat(self.levels, k)
        curve = np.repeat(self.line + height * self.shape, k)
        hits = sum(split_p(h, np.clip(curve + self.rng.choice(self.res, len(h)), 0, None), self.rng, b=499)[0] < ALPHA
                   for _ in range(self.SIMS))
        return hits / self.SIMS

    def mde(self) -> float:
        """The smallest height shown with POWER (bisection up to twice the observed height); minus
        that bound if even it is not."""
        lo, hi = 0.0, 2 * max(self.height, 1e-12)
        if self.power(hi) < POWER:
            return -hi
        for _ in range(7):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.power(mid) >= POWER else (mid, hi)
        return hi

    MAX_PER_LEVEL = 8  # sizes searched for 80% power

    def power_per_level(self, k: int) -> float:
        """Power at the observed height with k targets per level."""
        return self.power(self.height, k)


def unimodal(best: pl.DataFrame, unit: str, rng, mde: bool = True) -> Test:
    """C1 (module doc) on one model's soft vanilla targets."""
    d = best.sort("target_entropy", "target_id")
    h, y = d["target_entropy"].to_numpy().astype(float), d["kl_min"].to_numpy().astype(float)
    levels = np.unique(h)
    groups = [y[h == v] for v in levels]
    n = ", ".join(str(len(g)) for g in groups) or "0"
    if len(levels) < 3:
        return Test("rise then fall", math.nan, math.nan, False, f"{len(levels)} entropy levels (need 3)", n=n)
    means = np.array([g.mean() for g in groups])
    p, ways = split_p(h, y, rng)
    p_opp = _end_above_p(levels, groups)
    peak = int(np.argmax(means))
    hump = Hump(h, y, rng)
    stat = (f"peak {means[peak]:.3g} {unit} at H = {levels[peak]:.3g}; ends {means[0]:.3g} and {means[-1]:.3g}; "
            + "; ".join(f"half {w} picks H = {pk:.3g}, the other rises p = {pr:.2g}, falls p = {pf:.2g}"
                        for w, (pk, pr, pf) in zip("AB", ways)))
    t = Test("rise then fall", p, p_opp, _split_min_p(h) < ALPHA, stat,
             f"p = {p:.2g}; an end above the peak level p = {p_opp:.2g}", n,
             mde_of="height of the peak above the line joining the end levels", effect=hump.height,
             n80_of="targets per level", smallest=1, power_at=hump.power_per_level, n80_max=Hump.MAX_PER_LEVEL)
    if mde and t.verdict == NOT_SHOWN:
        t.mde = hump.mde()
    return t


# ---------------------------------------------------------------- C2: near zero at low entropy


def _low_bins(levels: np.ndarray, counts: np.ndarray, min_n: int) -> list[np.ndarray]:
    """Consecutive levels grouped so that each bin holds at least ``min_n`` targets (the last bin
    takes what is left)."""
    bins, cur, size = [], [], 0
    for v, c in zip(levels, counts):
        cur.append(v)
        size += c
        if size >= min_n:
            bins.append(np.array(cur))
            cur, size = [], 0
    if cur:
        if bins:
            bins[-1] = np.concatenate([bins[-1], cur])
        else:
            bins.append(np.array(cur))
    return bins


def near_zero(best: pl.DataFrame, unit: str, rng=None) -> list[Test]:
    """C2 (module doc) on one model's soft vanilla targets."""
    low_top = to_unit(from_unit(LOW_ENTROPY_BITS, "bits"), unit) + 1e-9
    above = best.filter(pl.col("target_entropy") > low_top)
    low = best.filter(pl.col("target_entropy") <= low_top)
    if low.is_empty():
        return [missing(f"no level up to {LOW_ENTROPY_BITS:g} bits")]
    if above.is_empty():
        return [missing(f"no level above {LOW_ENTROPY_BITS:g} bits to set the scale")]
    peak = float(above.group_by("target_entropy").agg(pl.col("kl_min").mean())["kl_min"].max())
    thr_kl = NEAR_ZERO_SHARE * peak
    top = float(best["target_entropy"].max())  # log |V| where the grid reaches it (Fig. 5's scale)
    thr_gap = NEAR_ZERO_SHARE * top
    h = low["target_entropy"].to_numpy()
    kl = low["kl_min"].to_numpy()
    gap = (low["q_entropy"] - low["target_entropy_achieved"]).abs().to_numpy()
    levels, counts = np.unique(h, return_counts=True)
    out = []
    for b in _low_bins(levels, counts, MIN_PAIRS):
        at = np.isin(h, b)
        where = f"H {b[0]:.3g}" + (f"-{b[-1]:.3g}" if len(b) > 1 else "")
        out.append(sign_below(kl[at], thr_kl, f"KL at {where} < 5% of peak {peak:.3g}", unit))
        out.append(sign_below(gap[at], thr_gap, f"|H(q)-H(p)| at {where} < 5% of the top target entropy {top:.3g}", unit))
    return out


# ---------------------------------------------------------------- C3-C6, C8, C9: comparisons


def method_order(sub: pl.DataFrame, unit: str, rng) -> list[Test]:
    """C3: each method against the one with the next fewer soft positions, paired by target."""
    sub = sub.filter(pl.col("method") != "gcg")  # the paper's methods; gcg is G1's
    soft_n = dict(sub.group_by("method").agg(pl.col("n_soft").first()).iter_rows())
    order = sorted(soft_n, key=lambda m: -soft_n[m])
    if len(order) < 2:
        return [missing(f"{len(order)} method(s) (need 2)")]
    by = {m: sub.filter(pl.col("method") == m).with_columns(pair=pl.col("target_id")) for m in order}
    return [paired_less(*_pairs(by[a], by[b]), f"{a} < {b}", unit, rng) for a, b in zip(order, order[1:])]


def gcg_gap(sub: pl.DataFrame, unit: str, rng) -> list[Test]:
    """G1 (ours): gcg prompts below hard ones on the same targets, each method's first init (the
    same init tokens where they are text); the statistic adds the share of the soft-hard gap that
    gcg closes, summed over targets."""
    key = ["target_id", "prefix_len"]
    by = {m: sub.filter(pl.col("method") == m).unique(key, keep="first").select(*key, pl.col("kl_min").alias(m))
          for m in ("soft", "hard", "gcg")}
    absent = [m for m, d in by.items() if d.is_empty()]
    if absent:
        return [missing(f"no {' or '.join(absent)} rows (configs/gcg.yaml adds gcg)")]
    j = by["hard"].join(by["gcg"], on=key).join(by["soft"], on=key).sort(key)
    test = paired_less(j["gcg"].to_numpy(), j["hard"].to_numpy(), "gcg < hard", unit, rng)
    gap = float((j["hard"] - j["soft"]).sum())
    if gap > 0:
        share = float((j["hard"] - j["gcg"]).sum()) / gap
        test = replace(test, statistic=f"{test.statistic}; share of the soft-hard gap closed {share:.0%} "
                                       f"(summed over {j.height} targets)")
    return [test]


def _draw_index(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    return df.sort("target_id").with_columns(draw=pl.col("target_id").cum_count().over(by))


def outliers_easier(sub: pl.DataFrame, unit: str, rng) -> list[Test]:
    """C4: within each (level, draw), the vanilla target's rank among it and the outlier targets."""
    out = sub.filter(pl.col("target_kind") == "outlier")
    van = sub.filter(pl.col("target_kind") == "vanilla")
    if out.is_empty() or van.is_empty():
        return [missing("needs outlier and vanilla targets")]
    k = ["n_outliers"] if "n_outliers" in out.columns else []
    out = _draw_index(out, ["target_entropy", *k]).group_by("target_entropy", "draw").agg(pl.col("kl_min").alias("others"))
    van = _draw_index(van, ["target_entropy"]).select("target_entropy", "draw", "kl_min")
    j = van.join(out, on=["target_entropy", "draw"]).sort("target_entropy", "draw")
    return [rank_within(j["kl_min"].to_numpy(), [np.asarray(o) for o in j["others"].to_list()], "outlier < vanilla", unit)]


def _against_matched(sub: pl.DataFrame, kind: str, label: str, unit: str, rng) -> Test | None:
    """Targets of ``kind`` against the matched targets made from them (or, for shuffled copies,
    from the target they copy): pairs by source target (:func:`distreach.tables.source_ids`)."""
    sub = sub.with_columns(pair=source_ids(sub))
    own = sub.filter(pl.col("target_kind") == kind)
    matched = sub.filter(pl.col("target_kind") == "matched")
    if own.is_empty():
        return None
    if kind != "shuffled":
        return paired_less(*_pairs(own, matched), label, unit, rng)
    copies = own.group_by("pair").agg(pl.col("kl_min").alias("copies"))
    j = matched.select("pair", "kl_min").join(copies, on="pair").sort("pair")
    return rank_within(j["kl_min"].to_numpy(), [np.asarray(c) for c in j["copies"].to_list()], label, unit)


def lm_easier(sub: pl.DataFrame, unit: str, rng) -> list[Test]:
    """C5: lm and shuffled copies (soft), lm (hard), each against its own matched vanilla target."""
    parts = []
    for method, kinds in (("soft", ("lm", "shuffled")), ("hard", ("lm",))):
        m = sub.filter(pl.col("method") == method)
        parts += [t for kind in kinds if (t := _against_matched(m, kind, f"{method}: {kind} < matched", unit, rng))]
    return parts or [missing("needs LM-generated and matched targets")]


def migrated_easier(sub: pl.DataFrame, unit: str, rng) -> list[Test]:
    """C6: migrated against its own matched vanilla target."""
    return [_against_matched(sub, "migrated", "migrated < matched", unit, rng) or missing("needs migrated and matched targets")]


def instruct_harder(sub: pl.DataFrame, base: str, instruct: str, unit: str, rng) -> list[Test]:
    """C8: base below its instruction-tuned variant on the same POS-uniform targets."""
    key = pl.col("target_id").alias("pair")
    b = sub.filter(pl.col("model") == base).with_columns(key)
    i = sub.filter(pl.col("model") == instruct).with_columns(key)
    return [paired_less(*_pairs(b, i), f"{base} < {instruct}", unit, rng)]


def adjectives_easiest(sub: pl.DataFrame, unit: str, rng) -> list[Test]:
    """C9: ADJ targets against each other tag's."""
    if "pos" not in sub.columns or "ADJ" not in set(sub["pos"]):
        return [missing("no ADJ targets")]
    adj = sub.filter(pl.col("pos") == "ADJ")["kl_min"]
    return [rank_sum_less(adj, sub.filter(pl.col("pos") == t)["kl_min"], f"ADJ < {t}", unit)
            for t in sorted(set(sub["pos"]) - {"ADJ"})]


# ---------------------------------------------------------------- convergence


def convergence(rows: pl.DataFrame) -> dict:
    """How a claim's tuning rows (every init) stopped: shares by reason, median steps, dtypes."""
    out = {"stopped_cap": math.nan, "stopped_patience": math.nan, "stopped_target": math.nan,
           "median_steps": math.nan, "dtype": "", "note": ""}
    if rows.is_empty() or "steps" not in rows.columns:
        return out
    out["median_steps"] = float(rows["steps"].median())
    out["dtype"] = ", ".join(sorted(set(rows["dtype"].drop_nulls()))) if "dtype" in rows.columns else ""
    if "stop_reason" in rows.columns:
        why = rows["stop_reason"]
        cap = float((why == "step cap").mean())
        out.update(stopped_cap=cap, stopped_patience=float(why.is_in(["patience", "converged"]).mean()),
                   stopped_target=float((why == "target reached").mean()))
        if cap > BUDGET_SHARE:
            out["note"] = f"{cap:.0%} of rows ran into the step cap: the verdict may reflect the optimisation budget"
    return out


# ---------------------------------------------------------------- the report


def _soft_vanilla(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter((pl.col("method") == "soft") & (pl.col("target_kind") == "vanilla"))


def _soft(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("method") == "soft")


def _first_init(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("init_index") == 0)


def _unimodal_rule(sub, unit, rng):
    return [unimodal(sub, unit, rng)]


def _instruct_rule(sub, unit, rng, base, instruct):
    return instruct_harder(sub, base, instruct, unit, rng)


# How a claim's rows are grouped into report rows: "model", one per model; "pair member", one per
# second model of each of its figure's ``pairs`` (alone); "pair", one per pair (both models, and
# the rule is also given their names)
# (claim, rows it looks at, rule, grouping); the figures whose data it uses: distreach.figureregistry
PLAN = [
    ("C1", _soft_vanilla, _unimodal_rule, "model"),
    ("C2", _soft_vanilla, near_zero, "model"),
    ("C3", None, method_order, "model"),
    ("C4", _soft, outliers_easier, "model"),
    ("C5", None, lm_easier, "model"),
    ("C6", _soft, migrated_easier, "model"),
    ("C7", _soft_vanilla, _unimodal_rule, "pair member"),
    ("C8", _soft, _instruct_rule, "pair"),
    ("C9", _soft, adjectives_easiest, "model"),
    ("G1", _first_init, gcg_gap, "model"),
]
COLUMNS = ("claim", "finding", "model", "figure", "n", "statistic", "interval", "p", "p_holm", "p_opposite", "mde", "n80",
           "stopped_cap",
           "stopped_patience", "stopped_target", "median_steps", "dtype", "verdict", "note")


def _pairs_of(figs: list[str], figures: dict) -> tuple[dict, str]:
    """The ``pairs`` of the first of ``figs`` whose registry entry has them, and why there are none
    (a message) when there are none."""
    fig = next(f for f in figs if FIGURES[f].pairs is not None)
    pairs = (figures.get(fig) or {}).get("pairs") or {}
    return pairs, f"no {FIGURES[fig].pairs.name} pairs in figures.{fig}.pairs"


def _groups(grouping: str, rows: pl.DataFrame, pairs: dict) -> list[tuple[str, list[str]]]:
    """(label, models) of each report row of a claim (grouping: :data:`PLAN`)."""
    if grouping == "pair member":
        return [(m, [m]) for m in sorted(set(pairs.values()))]
    if grouping == "pair":
        return [(f"{b} vs {i}", [b, i]) for b, i in pairs.items()]
    return [(m, [m]) for m in sorted(rows["model"].unique())]


def _claim_rows(claim, select, rule, grouping, df, figures, unit) -> list[dict]:
    """The report rows of one claim of :data:`PLAN`."""
    figs = claim_figures(claim)
    where = ", ".join(figs)
    exps = [e for f in figs if figures.get(f) for e in figure_experiments(figures[f])]
    rows = df.filter(pl.col("experiment").is_in(exps)) if exps else pl.DataFrame()
    if select is not None and exps:
        rows = select(rows)
    pairs, no_pairs = _pairs_of(figs, figures) if grouping != "model" else ({}, "")
    groups = _groups(grouping, rows, pairs) if not rows.is_empty() else []
    if not groups:
        why = (f"{' and '.join(figs)} {'is' if len(figs) == 1 else 'are'} not configured" if not exps
               else no_pairs or "no rows")
        return [{"claim": claim, "model": "-", "figure": where, **combine([missing(why)]), "n80": "",
                 **convergence(rows.head(0))}]
    out = []
    for label, models in groups:
        mine = rows.filter(pl.col("model").is_in(models))
        best = min_over_inits(mine)
        rng = _rng(claim, label)
        extra = models if grouping == "pair" else []
        parts = rule(best, unit, rng, *extra) if not best.is_empty() else [missing(f"no rows of {label}")]
        out.append({"claim": claim, "model": label, "figure": where, **combine(parts), "n80": sizes_text(parts),
                    **convergence(mine)})
    return out


def check(df: pl.DataFrame, figures: dict) -> pl.DataFrame:
    """One row per (claim, model) with the columns of :data:`COLUMNS`: the claims of :data:`PLAN`
    tested on the rows of ``df`` (collected tables) that the figures of ``figures`` (the config's
    ``figures`` section) draw."""
    unit = df["entropy_unit"][0] if df.height else "nats"
    out = [r for claim, select, rule, grouping in PLAN for r in _claim_rows(claim, select, rule, grouping, df, figures, unit)]
    table = pl.DataFrame(out, infer_schema_length=None).with_columns(finding=pl.col("claim").replace_strict(CLAIMS))
    paper = table["claim"].str.starts_with("C")  # Holm over the paper's claims; G1 (ours) is a family of its own
    p_holm = np.asarray(table["p"].to_list(), dtype=float)
    p_holm[paper.to_numpy()] = holm(p_holm[paper.to_numpy()].tolist())
    table = table.with_columns(p_holm=pl.Series(p_holm, dtype=pl.Float64))
    return table.select(COLUMNS)


# ---------------------------------------------------------------- writing it out

SHOWN = ("claim", "finding", "model", "n", "statistic", "interval", "p", "Holm p", "p opposite", "MDE",
         "sizes for 80% power", "stopped: cap / patience / target", "median steps", "dtype")


def _cells(r: dict) -> list[str]:
    def num(v, fmt="{:.2g}"):
        return "-" if v is None or not np.isfinite(v) else fmt.format(v)

    stopped = ("-" if not np.isfinite(r["stopped_cap"]) else
               " / ".join(f"{r[k]:.0%}" for k in ("stopped_cap", "stopped_patience", "stopped_target")))
    return [str(r["claim"]), str(r["finding"]), str(r["model"]), str(r["n"]), str(r["statistic"]), str(r["interval"]),
            num(r["p"]), num(r["p_holm"]), num(r["p_opposite"]), r["mde"] or "-", r["n80"] or "-", stopped,
            num(r["median_steps"], "{:.0f}"), r["dtype"] or "-"]


def to_markdown(claims: pl.DataFrame) -> str:
    lines = ["| " + " | ".join(SHOWN) + " | verdict |", "|" + "---|" * (len(SHOWN) + 1)]
    for r in claims.iter_rows(named=True):
        cells = " | ".join(c.replace("|", "\\|") for c in _cells(r))
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {cells} | **{r['verdict']}**{note} |")
    return "\n".join(lines) + "\n"


def rules_text() -> str:
    return (__doc__ or "").split("\n\n", 1)[1].strip()


OUTCOMES_TEXT = (
    "Outcomes: **holds**: the rule's test concludes the claim at alpha = 0.05 in the claimed direction; "
    "**contradicted**: the data conclude the opposite at the same alpha; **not shown**: the test could "
    "conclude with this data and concludes neither way (MDE: the smallest effect this data would detect "
    "with 80% power); **too few data**: the test cannot reach alpha whatever the values, or the data "
    "the claim needs are not configured. Holm p: adjusted over the rows of the paper's claims (C1-C9). p opposite: the "
    "one-sided p of the opposite direction (Bonferroni over the claim's comparisons), what contradicted rests on."
)


def write_report(claims: pl.DataFrame, md_path, html_path, table_path=None) -> None:
    """The claims table as Markdown, as a standalone HTML page and (``table_path``) as Arrow,
    each written atomically."""
    rules = rules_text()
    md = ("# The paper's findings on this run\n\n" + OUTCOMES_TEXT + "\n\n" + to_markdown(claims)
          + "\nHow the verdicts are reached (distreach.claims):\n\n" + rules + "\n")
    with atomic_path(md_path) as tmp:
        tmp.write_text(md)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r))
        + f"<td class='{r['verdict'].replace(' ', '-')}'><b>{html.escape(r['verdict'])}</b>"
        + (f"<br><small>{html.escape(r['note'])}</small>" if r["note"] else "") + "</td></tr>\n"
        for r in claims.iter_rows(named=True)
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (*SHOWN, "verdict"))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>distreach: the paper's findings on this run</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
.holds{{background:#e6f4ea}}.contradicted{{background:#fce8e6}}.not-shown{{background:#fef7e0}}.too-few-data{{background:#f1f3f4}}</style></head>
<body><h1>The paper's findings on this run</h1><p>{html.escape(OUTCOMES_TEXT.replace("**", ""))}</p>
<table><tr>{head}</tr>
{rows}</table><h2>How the verdicts are reached</h2><pre>{html.escape(rules)}</pre></body></html>
"""
    with atomic_path(html_path) as tmp:
        tmp.write_text(page)
    if table_path is not None:
        from .io import write_arrow

        write_arrow(claims.to_arrow(), table_path)
