"""Statistical tests with four outcomes, each with one meaning (numpy and scipy only).

A :class:`Test` is one comparison: its one-sided p-value in the claimed direction, its one-sided
p-value in the opposite direction, whether its p-value can reach ``ALPHA`` at all with these
counts, and, when it concludes neither way, the minimum detectable effect (MDE): the smallest
effect, in the claim's own unit, that data of this size and spread would detect with 80% power.

- ``holds``: the test concludes the claim at alpha (one-sided, in the claimed direction);
- ``contradicted``: the data conclude the opposite at alpha;
- ``not shown``: the test could conclude with these counts, and concludes neither way;
- ``too few data``: the test cannot reach alpha whatever the values.

Several comparisons that together make one claim (:func:`combine`) hold when every one holds
(an intersection-union test: each at alpha, no correction needed; the claim's p-value is the
largest), are contradicted when any one concludes the opposite at alpha / k (Bonferroni over the
k comparisons), are too few data when any one is (and none contradicts), and are not shown
otherwise.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

HOLDS, CONTRADICTED, NOT_SHOWN, TOO_FEW = "holds", "contradicted", "not shown", "too few data"
OUTCOMES = (HOLDS, CONTRADICTED, NOT_SHOWN, TOO_FEW)
ALPHA = 0.05
POWER = 0.8
# asymptotic relative efficiency against the t-test under normal errors, as a factor on the MDE:
# signed-rank and rank-sum tests need 3/pi of the t-test's n; sign-type tests 2/pi
RANK_ARE = math.sqrt(math.pi / 3)
SIGN_ARE = math.sqrt(math.pi / 2)


@dataclass
class Test:
    label: str
    p: float  # one-sided, in the claimed direction
    p_opposite: float  # one-sided, in the opposite direction
    reachable: bool  # whether p < ALPHA is possible with these counts
    statistic: str
    interval: str = "-"
    n: str = "-"
    mde: float | None = None  # in the claim's unit; set when the outcome is not shown
    mde_of: str = ""  # what the MDE measures (and the observed effect)
    effect: float | None = None  # the observed effect in the claimed direction, in the claim's unit
    mde_at: Callable[[int], float | None] | None = None  # the MDE at another size (``n80_of``)
    n80_of: str = ""
    smallest: int = 2  # the smallest size at which the test can conclude
    power_at: Callable[[int], float] | None = None  # instead of mde_at: the power at the observed effect
    n80_max: int = 1000  # the largest size searched for 80% power

    @property
    def n80(self) -> int | None:
        """The smallest size (``n80_of``) at which an effect as large as the observed one is shown
        with POWER: where the MDE is at most the effect (or the simulated power at least POWER);
        None when no size up to ``n80_max`` does."""
        if self.effect is None or not self.effect > 0 or (self.mde_at is None and self.power_at is None):
            return None
        if self.power_at is not None:
            return next((n for n in range(max(1, self.smallest), self.n80_max + 1) if self.power_at(n) >= POWER), None)

        def shown(n):
            m = self.mde_at(n)
            return m is not None and m <= self.effect

        lo, hi = max(2, self.smallest), self.n80_max  # the MDE falls as n grows: bisect
        if not shown(hi):
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if shown(mid) else (mid + 1, hi)
        return lo

    @property
    def verdict(self) -> str:
        if self.p < ALPHA:
            return HOLDS
        if self.p_opposite < ALPHA:
            return CONTRADICTED
        return NOT_SHOWN if self.reachable else TOO_FEW


def missing(label: str) -> Test:
    """A comparison whose data are not there (not configured, or no rows)."""
    return Test(label, math.nan, math.nan, False, label)


def combine(parts: list[Test]) -> dict:
    """One claim from its comparisons (module doc): verdict, p-value and the parts' texts."""
    if not parts:
        parts = [missing("no comparison has data")]
    k = len(parts)
    ps = [t.p for t in parts]
    p = max(ps) if all(np.isfinite(ps)) else math.nan
    opp = [t.p_opposite for t in parts if np.isfinite(t.p_opposite)]
    p_opp = min(1.0, k * min(opp)) if opp else math.nan  # Bonferroni over the parts
    if opp and min(opp) < ALPHA / k:
        verdict = CONTRADICTED
    elif not all(t.reachable for t in parts):
        verdict = TOO_FEW
    elif p < ALPHA:
        verdict = HOLDS
    else:
        verdict = NOT_SHOWN
    mdes = [f"{t.label}: {_fmt_mde(t)}" for t in parts if t.reachable and t.verdict == NOT_SHOWN and t.mde is not None]
    return {
        "verdict": verdict,
        "p": p,
        "p_opposite": p_opp,
        "statistic": "; ".join(t.statistic for t in parts),
        "interval": "; ".join(t.interval for t in parts),
        "n": ", ".join(t.n for t in parts),
        "mde": "; ".join(mdes) if verdict == NOT_SHOWN else "",
    }


def sizes_text(parts: list[Test]) -> str:
    """For each comparison, the size with which its observed effect is shown with POWER."""
    return "; ".join(f"{t.label}: {_fmt_n80(t)}" for t in parts if t.effect is not None)


def _fmt_mde(t: Test) -> str:
    value = f"> {-t.mde:.3g}" if t.mde < 0 else f"{t.mde:.3g}"  # a negative MDE: above the largest tried
    seen = "" if t.effect is None else f"; observed {t.effect:.3g}"
    return f"{value} ({t.mde_of}{seen})" if t.mde_of else value


def _fmt_n80(t: Test) -> str:
    if not t.effect > 0:
        return "- (the observed effect points the other way)"
    return f"{'> ' if t.n80 is None else ''}{t.n80 or t.n80_max} {t.n80_of}"


def holm(p: list[float]) -> list[float]:
    """Holm-adjusted p-values (NaN stays NaN, and is not counted)."""
    p = np.asarray(p, float)
    out = np.full(len(p), np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out.tolist()


def _t_mde(sd: float, n_eff: float, df: int, factor: float = 1.0) -> float | None:
    """Normal-theory MDE of a one-sided test at ALPHA with POWER: (t_(1-alpha) + t_power) * s.e."""
    if df < 1 or not np.isfinite(sd) or n_eff <= 0:
        return None
    return float((stats.t.ppf(1 - ALPHA, df) + stats.t.ppf(POWER, df)) * sd / math.sqrt(n_eff) * factor)


def _mean_ci(d: np.ndarray, sd: float) -> str:
    """The 95% t-interval of the mean of ``d``, as text."""
    if len(d) < 2 or not np.isfinite(sd):
        return "mean diff 95% CI -"
    half = stats.t.ppf(0.975, len(d) - 1) * sd / math.sqrt(len(d))
    return f"mean diff 95% CI [{d.mean() - half:.3g}, {d.mean() + half:.3g}]"


# ---------------------------------------------------------------- paired: signed-rank

MIN_PAIRS = next(n for n in range(1, 64) if 0.5**n < ALPHA)  # exact signed-rank: min p = 2^-n


def paired_less(a, b, label: str, unit: str, rng: np.random.Generator) -> Test:
    """Is ``a`` below ``b`` on the same targets? Wilcoxon signed-rank, one-sided each way; pairs
    that do not differ carry no sign. MDE: of the mean difference (normal theory, signed-rank
    efficiency)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    nz = d[d != 0]
    n = len(d)
    if len(nz) == 0:
        return Test(label, 1.0, 1.0, False, f"{label}: {n} pairs, none differ", n=str(n))
    p = float(stats.wilcoxon(a, b, alternative="less").pvalue)
    p_opp = float(stats.wilcoxon(a, b, alternative="greater").pvalue)
    ranks = stats.rankdata(np.abs(nz))
    r = float((ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum())  # rank-biserial, negative: a lower
    stat = f"{label}: median diff {np.median(d):.3g} {unit}, r = {r:+.2f}"
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    return Test(label, p, p_opp, len(nz) >= MIN_PAIRS, stat, f"{_mean_ci(d, sd)}; p = {p:.2g}",
                str(n), _t_mde(sd, n, n - 1, RANK_ARE), "mean difference", float(-d.mean()),
                lambda k: _t_mde(sd, k, k - 1, RANK_ARE), "pairs", MIN_PAIRS)


# ---------------------------------------------------------------- two samples: rank-sum


def rank_sum_less(a, b, label: str, unit: str) -> Test:
    """Are ``a``'s values below ``b``'s (different targets)? Mann-Whitney U, one-sided each way.
    MDE: of the difference in means (normal theory, rank-sum efficiency)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    n = f"{na}/{nb}"
    if min(na, nb) == 0:
        return Test(label, math.nan, math.nan, False, f"{label}: {n} targets", n=n)
    p = float(stats.mannwhitneyu(a, b, alternative="less").pvalue)
    u = stats.mannwhitneyu(a, b, alternative="greater")
    r = 2 * u.statistic / (na * nb) - 1  # rank-biserial: -1 = every a below every b
    reachable = 1 / math.comb(na + nb, na) < ALPHA
    df = na + nb - 2
    sd = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / df) if df > 0 and min(na, nb) > 1 else math.nan
    stat = f"{label}: medians {np.median(a):.3g} vs {np.median(b):.3g} {unit}, r = {r:+.2f}"
    smallest = next(k for k in range(1, 64) if 1 / math.comb(2 * k, k) < ALPHA)
    return Test(label, p, float(u.pvalue), reachable, stat, f"p = {p:.2g}", n,
                _t_mde(sd, 1 / (1 / na + 1 / nb), df, RANK_ARE), "difference in means", float(b.mean() - a.mean()),
                lambda k: _t_mde(sd, k / 2, 2 * k - 2, RANK_ARE), "targets per group", smallest)


# ---------------------------------------------------------------- within groups: rank of one member


def _doubled_ranks(groups: list[np.ndarray]) -> list[np.ndarray]:
    """Each group's doubled mid-ranks (integers), ranked within the group."""
    sizes = {len(g) for g in groups}
    if len(sizes) == 1:  # one call for groups of one size
        return list((2 * stats.rankdata(np.stack(groups), axis=1)).astype(int))
    return [(2 * stats.rankdata(g)).astype(int) for g in groups]


def _null_rank_sum(ranks: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Exact null distribution of the sum over groups of one member's doubled mid-rank, when that
    member is equally likely to be any of its group (exchangeable values): (pmf, offset)."""
    pmf, offset = np.array([1.0]), 0
    for r2 in ranks:
        lo = int(r2.min())
        part = np.bincount(r2 - lo).astype(float) / len(r2)
        pmf, offset = np.convolve(pmf, part), offset + lo
    return pmf, offset


def rank_within(single, others: list, label: str, unit: str) -> Test:
    """Are the ``others`` of each group below its ``single`` member? (For each LM target: its
    shuffled copies against its matched target; for each level and draw: the outlier targets
    against the vanilla target.) The statistic is the sum over groups of the single member's rank
    among its group; under no difference the member's rank is uniform within its group, so the
    null distribution is exact (a permutation test within groups, whatever the values' shape).
    MDE: of the mean over groups of (single - mean of others) (normal theory, sign-test
    efficiency, a conservative factor for small groups)."""
    single = np.asarray(single, float)
    groups = [np.concatenate([[s], np.asarray(o, float)]) for s, o in zip(single, others)]
    groups = [g for g in groups if len(g) > 1]
    n = len(groups)
    if n == 0:
        return Test(label, math.nan, math.nan, False, f"{label}: no groups", n="0")
    ranks = _doubled_ranks(groups)
    t_obs = int(sum(r[0] for r in ranks))
    pmf, offset = _null_rank_sum(ranks)
    k = t_obs - offset
    p = float(pmf[k:].sum())  # the single member high: the others below it (the claim)
    p_opp = float(pmf[: k + 1].sum())
    reachable = float(np.prod([1 / len(g) for g in groups])) < ALPHA
    d = np.array([g[0] - g[1:].mean() for g in groups])
    sizes = sorted({len(g) - 1 for g in groups})
    stat = (f"{label}: median of (single - mean of others) {np.median(d):.3g} {unit}; "
            f"{n} groups of 1 + {'/'.join(map(str, sizes))}")
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    smallest = next(k for k in range(1, 64) if (1 / len(groups[0])) ** k < ALPHA)
    return Test(label, p, p_opp, reachable, stat, f"p = {p:.2g}", str(n), _t_mde(sd, n, n - 1, SIGN_ARE),
                "mean difference", float(d.mean()), lambda k: _t_mde(sd, k, k - 1, SIGN_ARE), "groups", smallest)


# ---------------------------------------------------------------- one sample against a threshold: sign test


def sign_below(values, threshold: float, label: str, unit: str) -> Test:
    """Is the median of ``values`` below ``threshold``? Exact sign test, one-sided each way (values
    equal to the threshold carry no sign). MDE: how far below the threshold the median must lie to
    be shown with 80% power, for normal values of the observed spread."""
    v = np.asarray(values, float)
    below, above = int((v < threshold).sum()), int((v > threshold).sum())
    n = below + above
    if n == 0:
        return Test(label, 1.0, 1.0, False, f"{label}: no values off the threshold", n=str(len(v)))
    p = float(stats.binom.sf(below - 1, n, 0.5))
    p_opp = float(stats.binom.sf(above - 1, n, 0.5))
    stat = f"{label}: {below} of {n} below {threshold:.3g} {unit} (median {np.median(v):.3g})"
    reachable = 0.5**n < ALPHA
    sd = float(v.std(ddof=1)) if len(v) > 1 else math.nan
    mde = None
    if len(v) > 1 and reachable and min(p, p_opp) >= ALPHA:  # only a result that is not shown needs it
        mde = float(stats.norm.ppf(_binom_share(n)) * sd)
    return Test(label, p, p_opp, reachable, stat, f"p = {p:.2g}", str(len(v)), mde, "median below the threshold",
                float(threshold - np.median(v)) if len(v) > 1 else None,
                lambda k: float(stats.norm.ppf(_binom_share(k)) * sd), "targets per bin", MIN_PAIRS)


@functools.lru_cache(maxsize=None)
def _binom_share(n: int) -> float:
    """The smallest probability of a value below the threshold with which the sign test on n
    values says holds with probability POWER."""
    need = next(c for c in range(n + 1) if stats.binom.sf(c - 1, n, 0.5) < ALPHA)  # fewest below that holds
    lo, hi = 0.5, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if stats.binom.sf(need - 1, n, mid) >= POWER else (mid, hi)
    return hi


# ---------------------------------------------------------------- trends: Spearman by permutation

PERM_B = 1999  # permutations of a trend test (p >= 1 / (PERM_B + 1))
PERM_MAX_N = 60  # above this many points, Spearman's asymptotic p-value


def trend_p(x, y, increasing: bool, rng: np.random.Generator, b: int = PERM_B) -> float:
    """One-sided p-value of Spearman's rank correlation of y with x (a rise when ``increasing``):
    by ``b`` seeded permutations of y (valid for any n and ties in x), or asymptotic above
    PERM_MAX_N points. 1 when x has fewer than 2 distinct values."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(np.unique(x)) < 2:
        return 1.0
    if len(y) > PERM_MAX_N:
        res = stats.spearmanr(x, y, alternative="greater" if increasing else "less")
        return float(res.pvalue) if np.isfinite(res.pvalue) else 1.0
    rx = stats.rankdata(x)
    rx -= rx.mean()
    ry = stats.rankdata(y)
    sign = 1.0 if increasing else -1.0
    obs = sign * float(rx @ ry)
    null = sign * (rng.permuted(np.tile(ry, (b, 1)), axis=1) @ rx)
    return float((1 + np.sum(null >= obs - 1e-9)) / (b + 1))


def trend_min_p(x, b: int = PERM_B) -> float:
    """The smallest p-value :func:`trend_p` can give for these x (y strictly monotone in x)."""
    x = np.asarray(x, float)
    levels, counts = np.unique(x, return_counts=True)
    if len(levels) < 2:
        return 1.0
    if len(x) > PERM_MAX_N:
        return 0.0
    exact = math.exp(sum(math.lgamma(c + 1) for c in counts) - math.lgamma(len(x) + 1))
    return max(exact, 1 / (b + 1))
