"""Calibration of the claims' rules, by seeded simulation (numpy and scipy only).

For each rule: data where its claim is false, in the least favourable way (as close to the claim
as a false claim gets), at the default config's sizes and the paper's; the rule may say holds at
most alpha of the time (plus two Monte Carlo standard errors). And data where the claim is true
by a stated effect, where it must say holds most of the time, so a rule that never concludes
cannot pass.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import yaml

from distreach import claims
from distreach.vanilla import EntropyGrid
from distreach.verdicts import ALPHA, HOLDS

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

N_SIM = 1000
LIMIT = ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / N_SIM)  # alpha + 2 Monte Carlo s.e.
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())
PAPER = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
LOG2_V = {"smollm2": math.log2(49152), "llama": math.log2(128256)}


def levels_of(cfg: dict, family: str, vocab_bits: float) -> list[float]:
    """The entropy levels of a configured vanilla family (in bits) for a vocabulary of 2^vocab_bits."""
    grid = cfg["targets"][family]["grid"]
    return EntropyGrid(unit="bits", **grid).levels(round(2**vocab_bits))


SIZES = {  # (levels, targets per level) of Fig. 1's data
    "default": (levels_of(DEFAULT, "vanilla", LOG2_V["smollm2"]), DEFAULT["targets"]["vanilla"]["per_level"]),
    "paper": (levels_of(PAPER, "vanilla", LOG2_V["llama"]), PAPER["targets"]["vanilla"]["per_level"]),
    # where choosing the peak on the data that test it would show (about 8% false holds)
    "three per level": (levels_of(DEFAULT, "vanilla", LOG2_V["smollm2"]), 3),
}


def rate(outcomes) -> float:
    return float(np.mean([o == HOLDS for o in outcomes]))


def table(h, y, **extra) -> pl.DataFrame:
    n = len(h)
    cols = {"target_entropy": np.asarray(h, float), "kl_min": np.asarray(y, float),
            "target_id": [f"t{i:05d}" for i in range(n)], "target_entropy_achieved": np.asarray(h, float)}
    cols.update(extra)
    return pl.DataFrame(cols)


# ---------------------------------------------------------------- C1


def curve_values(levels, per_level, means_of, noise, rng):
    h = np.repeat(levels, per_level)
    return h, means_of(h) + noise * rng.standard_normal(len(h))


def c1_outcomes(size, means_of, noise, seed):
    levels, per_level = SIZES[size]
    levels = np.asarray(levels)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(N_SIM):
        h, y = curve_values(levels, per_level, means_of, noise, rng)
        out.append(claims.unimodal(table(h, y), "bits", rng, mde=False).verdict)
    return out


def rise_then_flat(h, top=16.0):
    """The least favourable false C1: KL rises to the middle, then stays where it got (no fall)."""
    return np.minimum(h, top / 2) * 0.5


def tent(h, top=16.0, peak=8.0):
    return np.where(h <= peak, h * 0.5, 4.0 - (h - peak) * 0.5 * 4.0 / (top - peak))


@pytest.mark.parametrize("size", ["default", pytest.param("paper", marks=pytest.mark.slow), "three per level"])
def test_c1_rarely_holds_for_a_curve_that_rises_then_stays_flat(size):
    assert rate(c1_outcomes(size, rise_then_flat, noise=0.3, seed=1)) <= LIMIT


@pytest.mark.parametrize("size", ["default", pytest.param("paper", marks=pytest.mark.slow)])
def test_c1_rarely_holds_for_a_flat_curve(size):
    assert rate(c1_outcomes(size, lambda h: np.ones_like(h), noise=0.3, seed=2)) <= LIMIT


@pytest.mark.slow  # power (holds under a clear effect): the whole suite; the false-holds rates stay fast
@pytest.mark.parametrize("size", ["default", "paper"])
def test_c1_holds_for_a_clear_rise_and_fall(size):
    """Power: a tent rising 0.5 bits of KL per bit of entropy to 4 bits, then falling to 0, with a
    scatter of 0.3 bits between targets of a level."""
    assert rate(c1_outcomes(size, tent, noise=0.3, seed=3)) >= 0.8


# ---------------------------------------------------------------- C2


def c2_outcomes(per_level, low_median_share, seed, levels=(0.0, 2.0)):
    """Fig. 1 data with a peak of about 5 bits above 2 bits; at low entropy KL values whose median
    is ``low_median_share`` of the near-zero threshold (1: the least favourable false claim)."""
    rng = np.random.default_rng(seed)
    last_bin = claims._low_bins(np.asarray(levels), np.full(len(levels), per_level), claims.MIN_PAIRS)[-1]
    out = []
    for _ in range(N_SIM):
        hi_h = np.repeat([4.0, 8.0, 12.0, 15.6], 2)
        hi_y = np.repeat([3.0, 5.0, 4.0, 2.0], 2) + 0.3 * rng.standard_normal(len(hi_h))
        peak = max(hi_y[hi_h == v].mean() for v in np.unique(hi_h))
        thr = claims.NEAR_ZERO_SHARE * peak
        lo_h = np.repeat(levels, per_level)
        # the last bin's median at the given share of the threshold, the others' far below (an
        # intersection-union test is least favoured by one comparison at its boundary)
        share = np.where(np.isin(lo_h, last_bin), low_median_share, 0.01)
        lo_y = thr * share * rng.lognormal(0.0, 1.0, len(lo_h))
        h, y = np.concatenate([lo_h, hi_h]), np.concatenate([lo_y, hi_y])
        t = table(h, y, q_entropy=h)  # the entropy gap is 0: the KL part decides
        out.append(claims.combine(claims.near_zero(t, "bits"))["verdict"])
    return out


def low_levels(cfg):
    levels, per_level = (levels_of(cfg, "vanilla", LOG2_V["llama"]), cfg["targets"]["vanilla"]["per_level"])
    return [v for v in levels if v <= 2.0 + 1e-9], per_level


@pytest.mark.parametrize("cfg", [DEFAULT, pytest.param(PAPER, marks=pytest.mark.slow)], ids=["default", "paper"])
def test_c2_rarely_holds_when_low_entropy_kl_sits_at_the_threshold(cfg):
    levels, per_level = low_levels(cfg)
    assert rate(c2_outcomes(per_level, 1.0, seed=4, levels=levels)) <= LIMIT


@pytest.mark.slow  # power: the whole suite
@pytest.mark.parametrize("cfg", [DEFAULT, PAPER], ids=["default", "paper"])
def test_c2_holds_when_low_entropy_kl_is_far_below_the_threshold(cfg):
    levels, per_level = low_levels(cfg)
    assert rate(c2_outcomes(per_level, 0.01, seed=5, levels=levels)) >= 0.8


# ---------------------------------------------------------------- C3, C5, C9: comparisons


def lognormal(rng, n, shift=0.0):
    """Skewed, positive KL-like values (median e^shift)."""
    return rng.lognormal(shift, 0.8, n)


ids = [f"t{i:05d}" for i in range(100_000)]


def c3_outcomes(n, gap, seed):
    """Three methods on n targets: soft and hybrid-3 exchangeable (``gap`` 0: the least favourable
    false claim) or soft lower by ``gap`` (log scale); hybrid-3 clearly below hard."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(N_SIM):
        base = lognormal(rng, n, 1.0)
        soft = base * np.exp(-gap + 0.3 * rng.standard_normal(n))
        hyb = base * np.exp(0.3 * rng.standard_normal(n))
        hard = hyb * 3.0
        rows = pl.DataFrame({"method": np.repeat(["soft", "hybrid-3", "hard"], n), "n_soft": np.repeat([5, 3, 0], n),
                             "target_id": ids[:n] * 3, "kl_min": np.concatenate([soft, hyb, hard])})
        out.append(claims.combine(claims.method_order(rows, "bits", rng))["verdict"])
    return out


def methods_targets(cfg, vocab_bits):
    family = cfg["experiments"]["methods"]["targets"]
    return len(levels_of(cfg, family, vocab_bits)) * cfg["targets"][family]["per_level"]


@pytest.mark.parametrize("n", [methods_targets(DEFAULT, LOG2_V["smollm2"]),
                               pytest.param(methods_targets(PAPER, LOG2_V["llama"]), marks=pytest.mark.slow)],
                         ids=["default", "paper"])
def test_c3_rarely_holds_when_two_methods_do_equally(n):
    assert rate(c3_outcomes(n, 0.0, seed=6)) <= LIMIT


@pytest.mark.slow  # power: the whole suite
def test_c3_holds_when_each_method_is_clearly_below_the_next():
    assert rate(c3_outcomes(methods_targets(DEFAULT, LOG2_V["smollm2"]), 1.0, seed=7)) >= 0.8


def g1_outcomes(n, gap, seed):
    """G1 on n targets: gcg and hard exchangeable (``gap`` 0: the least favourable false claim) or
    gcg lower by ``gap`` (log scale); soft clearly below both."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(N_SIM):
        base = lognormal(rng, n, 1.0)
        hard = base * np.exp(0.3 * rng.standard_normal(n))
        gcg = base * np.exp(-gap + 0.3 * rng.standard_normal(n))
        rows = pl.DataFrame({"method": np.repeat(["soft", "hard", "gcg"], n), "target_id": ids[:n] * 3,
                             "prefix_len": [5] * (3 * n), "kl_min": np.concatenate([base * 0.05, hard, gcg])})
        out.append(claims.combine(claims.gcg_gap(rows, "bits", rng))["verdict"])
    return out


@pytest.mark.parametrize("n", [10, pytest.param(341, marks=pytest.mark.slow)], ids=["gcg-overlay", "paper"])
def test_g1_rarely_holds_when_gcg_and_hard_do_equally(n):
    assert rate(g1_outcomes(n, 0.0, seed=16)) <= LIMIT


@pytest.mark.slow  # power: the whole suite
def test_g1_holds_when_gcg_is_clearly_below_hard():
    assert rate(g1_outcomes(10, 1.0, seed=17)) >= 0.8


def c5_outcomes(n, copies, shuffled_factor, seed):
    """LM targets clearly easier than their matched targets; shuffled copies exchangeable with the
    matched target (factor 1: the least favourable false claim) or easier by ``shuffled_factor``."""
    rng = np.random.default_rng(seed)
    lm = [f"lm-{i:04d}" for i in range(n)]
    kinds = ["matched"] * n + ["lm"] * n + ["shuffled"] * (n * copies)
    tids = [f"matched-{t}" for t in lm] + lm + [f"{t}-shuffled{c}" for t in lm for c in range(copies)]
    sources = lm + [None] * n + [t for t in lm for _ in range(copies)]
    out = []
    for _ in range(N_SIM):
        level = rng.uniform(0.5, 2.0, n)  # targets differ in difficulty; a target's variants share it
        kl = np.concatenate([level * lognormal(rng, n), level * 0.2 * lognormal(rng, n),
                             np.repeat(level, copies) * shuffled_factor * lognormal(rng, n * copies)])
        rows = pl.DataFrame({"method": ["soft"] * len(kinds), "target_kind": kinds, "target_id": tids, "kl_min": kl,
                             "source_target_id": sources})
        out.append(claims.combine(claims.lm_easier(rows, "bits", rng))["verdict"])
    return out


C5_SIZES = [(DEFAULT["targets"]["lm"]["n"], DEFAULT["targets"]["lm-shuffled"]["copies"]),
            pytest.param(PAPER["targets"]["lm"]["n"], PAPER["targets"]["lm-shuffled"]["copies"], marks=pytest.mark.slow)]


@pytest.mark.parametrize("n,copies", C5_SIZES, ids=["default", "paper"])
def test_c5_rarely_holds_when_shuffled_copies_are_as_hard_as_the_matched_target(n, copies):
    """The minimum over a target's copies would be biased here (more copies, lower minimum)."""
    assert rate(c5_outcomes(n, copies, 1.0, seed=8)) <= LIMIT


@pytest.mark.slow  # power: the whole suite
def test_c5_holds_when_shuffled_copies_are_clearly_easier():
    """Power: copies at 15% of their matched target's KL (LM targets at 20%)."""
    n, copies = C5_SIZES[0]
    assert rate(c5_outcomes(n, copies, 0.15, seed=9)) >= 0.8


def c9_outcomes(draws, adj_shift, seed):
    """ADJ distributed as NOUN shifted by ``adj_shift`` on the log scale (0: the least favourable
    false claim: ADJ ties with one tag), the other tags clearly harder."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(N_SIM):
        tags = (("NOUN", 1.5), ("PROPN", 2.5), ("VERB", 2.5), ("ADJ", 1.5 - adj_shift))
        rows = pl.DataFrame({"pos": np.repeat([t for t, _ in tags], draws),
                             "kl_min": np.concatenate([lognormal(rng, draws, shift) for _, shift in tags])})
        out.append(claims.combine(claims.adjectives_easiest(rows, "bits", rng))["verdict"])
    return out


@pytest.mark.parametrize("draws", [DEFAULT["targets"]["pos-uniform"]["draws"],
                                   pytest.param(PAPER["targets"]["pos-uniform"]["draws"], marks=pytest.mark.slow)],
                         ids=["default", "paper"])
def test_c9_rarely_holds_when_adjectives_tie_with_one_tag(draws):
    assert rate(c9_outcomes(draws, 0.0, seed=10)) <= LIMIT


@pytest.mark.slow  # power: the whole suite
def test_c9_holds_when_adjectives_are_clearly_easiest():
    assert rate(c9_outcomes(DEFAULT["targets"]["pos-uniform"]["draws"], 1.5, seed=11)) >= 0.8


# ------------------------------------------------------------------ the MDE means what it says


def test_t_mde_is_the_normal_theory_formula():
    """One-sided t-test at alpha 0.05 and 80% power, 9 degrees of freedom: (1.833 + 0.883) s.e."""
    from distreach.verdicts import _t_mde

    assert _t_mde(2.0, 10, 9) == pytest.approx((1.8331 + 0.8834) * 2.0 / math.sqrt(10), rel=1e-3)
    assert _t_mde(2.0, 10, 9, 1.1) == pytest.approx(1.1 * _t_mde(2.0, 10, 9), rel=1e-12)


@pytest.mark.parametrize("rule", ["paired", "rank sum", "sign", "rank within"])
def test_an_effect_the_size_of_the_mde_holds_about_80_percent_of_the_time(rule):
    """The MDE a rule states, from data whose spread is exactly sd: normal data with that true
    spread and a true effect of that MDE make the rule say holds in about 80% of the data sets
    (the MDE is a normal-theory approximation; rank within's carries a conservative factor for
    small groups, so its power there is somewhat above 80%)."""
    from distreach.verdicts import paired_less, rank_sum_less, rank_within, sign_below

    rng = np.random.default_rng(31)
    n, sd, copies = 12, 1.0, 5
    z = rng.normal(size=n)
    z = (z - z.mean()) / z.std(ddof=1) * sd  # sample spread exactly sd
    # rank within: a group's single member against the mean of its copies, d = s - mean(o), has
    # spread sd when both have spread sd / sqrt(1 + 1 / copies)
    s = sd / math.sqrt(1 + 1 / copies)
    if rule == "paired":
        stated = paired_less(z, np.zeros(n), "x", "bits", rng)
    elif rule == "rank sum":
        stated = rank_sum_less(z, z[::-1].copy(), "x", "bits")
    elif rule == "sign":
        stated = sign_below(z, 0.0, "x", "bits")
    else:
        stated = rank_within(z, [np.zeros(copies)] * n, "x", "bits")
    effect = stated.mde  # what the report states, and what it says n data would show
    assert stated.mde_at(n) == pytest.approx(effect, rel=1e-12)

    def holds() -> bool:
        a, b = rng.normal(-effect, sd, n), rng.normal(0, sd, n)
        # paired: a are the differences (spread sd), against zeros; rank sum: a against b; sign: the
        # median of a below 0; rank within: each single member above its copies by the effect
        if rule == "paired":
            return paired_less(a, np.zeros(n), "x", "bits", rng).p < ALPHA
        if rule == "rank sum":
            return rank_sum_less(a, b, "x", "bits").p < ALPHA
        if rule == "sign":
            return sign_below(a, 0.0, "x", "bits").p < ALPHA
        return rank_within(rng.normal(effect, s, n), [rng.normal(0, s, copies) for _ in range(n)], "x", "bits").p < ALPHA

    share = sum(holds() for _ in range(N_SIM)) / N_SIM
    # 80% within 3 standard errors of N_SIM draws (0.013 each; rank within above 80% by design): a
    # stated power of 75% or 85% falls outside at this seed (at another, 75% passes about 1 in 4)
    low, high = (0.8, 0.92) if rule == "rank within" else (0.76, 0.84)
    assert low <= share <= high, (share, effect)
