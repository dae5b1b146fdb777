"""Claims verdicts come from the data by their stated rules: each rule can say holds, does not
hold and inconclusive on synthetic tables where the answer is known."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from distreach import claims

FIG01 = {"fig01": {"experiment": "e"}}


def rows(model, kind, method, n_soft, targets, experiment="e", unit="bits", **extra):
    """``targets``: (target_id, entropy, kl) triples; two inits each, the first the minimum;
    q_entropy = achieved entropy + kl (a rough stand-in)."""
    out = []
    for tid, h, kl in targets:
        for init, worse in ((0, 0.0), (1, 0.5)):
            out.append(
                dict(experiment=experiment, model=model, method=method, prefix_len=5, n_soft=n_soft, target_kind=kind,
                     target_id=tid, target_entropy=float(h), target_entropy_achieved=float(h), q_entropy=float(h) + kl,
                     entropy_unit=unit, kl_min=kl + worse, status="ok", init_index=init, **extra)
            )
    return out


def curve(model, means, per_level, noise=0.1, seed=0, kind="vanilla", step=2.0):
    rng = np.random.default_rng(seed)
    return rows(model, kind, "soft", 5, [
        (f"{kind}-L{li:03d}-r{r}", li * step, max(m + noise * rng.standard_normal(), 0.0))
        for li, m in enumerate(means) for r in range(per_level)
    ])


def verdicts(t):
    return {(r["claim"], r["model"]): r["verdict"] for r in t.iter_rows(named=True)}


def test_unimodal_holds_and_monotone_two_peaked_flat_fail_and_small_is_inconclusive():
    hump = [0.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 1.0, 0.5]
    data = (
        curve("hump", hump, 3)
        + curve("mono", [0.0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4], 3)
        + curve("two-peaks", [0.0, 2.0, 4.0, 1.0, 0.5, 1.0, 4.3, 2.0, 0.5], 3)
        + curve("flat", [1.0] * 9, 3, noise=0.3)
        # rises and falls cleanly, but the peak level's mean rests on one target: not above the ends
        + curve("spike", [1, 2, 3, 4, 5, 6, 7, 0.4, 7, 6, 5, 4, 3, 2, 1], 3, noise=0.05)
        + rows("spike", "vanilla", "soft", 5, [("vanilla-L007-r9", 14.0, 60.0)])
        # a peak well above both ends, but after it the loss creeps up again (within 2 s.e. per step)
        + rows("creep", "vanilla", "soft", 5, [(f"v-{li}-{r}", 2.0 * li, m + d)
                                               for li, m in enumerate([1, 5, 10] + [1.5 + 0.2 * i for i in range(9)])
                                               for r, d in enumerate((-1, 0, 1))])
        + curve("short", [0.0, 3.0, 0.5], 2)  # an interior peak, too few targets per side for Spearman
        + curve("one-each", hump, 1)
    )
    t = claims.check(pl.DataFrame(data), FIG01)
    got = verdicts(t)
    assert got[("C1", "hump")] == "holds"
    assert got[("C1", "mono")] == "does not hold"
    assert got[("C1", "two-peaks")] == "does not hold"
    assert got[("C1", "flat")] == "does not hold"
    assert got[("C1", "spike")] == "does not hold"
    assert got[("C1", "creep")] == "does not hold"
    assert got[("C1", "short")] == "inconclusive"
    assert got[("C1", "one-each")] == "inconclusive"
    mono = t.filter((pl.col("claim") == "C1") & (pl.col("model") == "mono")).row(0, named=True)
    assert "(peak at an end)" in mono["statistic"]
    row = t.filter((pl.col("claim") == "C1") & (pl.col("model") == "hump")).row(0, named=True)
    assert "bootstrap: shape holds in" in row["statistic"] and "95% CI" in row["interval"] and row["n"] == ", ".join(["3"] * 9)
    again = claims.check(pl.DataFrame(data), FIG01)
    assert again.equals(t)  # seeded bootstraps


def test_near_zero_checks_every_level_up_to_2_bits_for_kl_and_entropy_gap():
    ok = rows("ok", "vanilla", "soft", 5, [("a", 0, 0.0005), ("b", 0, 0.0007), ("c", 2, 0.002), ("d", 2, 0.003), ("e", 4, 2.0), ("f", 4, 2.5)])
    # the lowest level is near zero, the 2-bit level is not (the old rule looked only at the lowest)
    bad = rows("bad", "vanilla", "soft", 5, [("a", 0, 0.0005), ("b", 0, 0.0007), ("c", 2, 0.3), ("d", 2, 0.35)])
    small = rows("small", "vanilla", "soft", 5, [("a", 0, 0.0005), ("c", 2, 0.002), ("d", 2, 0.001)])
    gap = [dict(r, q_entropy=r["target_entropy"] + 0.5) for r in rows("gap", "vanilla", "soft", 5, [("a", 0, 1e-4), ("b", 0, 1e-4)])]
    got = verdicts(claims.check(pl.DataFrame(ok + bad + small + gap), FIG01))
    assert got[("C2", "ok")] == "holds"
    assert got[("C2", "bad")] == "does not hold"
    assert got[("C2", "gap")] == "does not hold"
    assert got[("C2", "small")] == "inconclusive"


def targets(prefix, kls, h=4.0):
    return [(f"{prefix}{i}", h, kl) for i, kl in enumerate(kls)]


BASE = np.linspace(0.5, 3.0, 8)


@pytest.mark.parametrize(
    "gaps, n, want",
    [([0.2, 0.3], 8, "holds"), ([0.2, -0.3], 8, "does not hold"), ([0.2, 0.3], 4, "inconclusive")],
)
def test_method_order_is_paired_by_target(gaps, n, want):
    soft = BASE[:n]
    hyb = soft + gaps[0] + 0.05 * np.sin(np.arange(n))
    hard = hyb + gaps[1] + 0.05 * np.cos(np.arange(n))
    data = (rows("m", "vanilla", "soft", 5, targets("t", soft)) + rows("m", "vanilla", "hybrid-1", 1, targets("t", hyb))
            + rows("m", "vanilla", "hard", 0, targets("t", hard)))
    t = claims.check(pl.DataFrame(data), {"fig04": {"experiments": ["e"], "model": "m"}})
    row = t.filter(pl.col("claim") == "C3").row(0, named=True)
    assert row["verdict"] == want
    if n >= claims.MIN_PAIRS:
        assert "soft < hybrid-1" in row["statistic"] and "hybrid-1 < hard" in row["statistic"] and "p = " in row["interval"]


def lm_family(lm, matched, shuffled, method="soft", experiment="e"):
    out = rows("m", "lm", method, 5, [(f"lm-{i:04d}", 3.0, v) for i, v in enumerate(lm)], experiment)
    out += rows("m", "matched", method, 5, [(f"matched-lm-{i:04d}", 3.0, v) for i, v in enumerate(matched)], experiment)
    for c, s in enumerate(shuffled):
        out += rows("m", "shuffled", method, 5, [(f"lm-{i:04d}-shuffled{c}", 3.0, v) for i, v in enumerate(s)], experiment)
    return out


def test_lm_and_shuffled_against_their_own_matched_targets():
    fig = {"fig09": {"experiments": ["e"], "model": "m"}}
    lm, matched = BASE * 0.5, BASE
    good = lm_family(lm, matched, [BASE * 2, BASE * 0.7])  # the minimum over shuffles is below matched
    assert verdicts(claims.check(pl.DataFrame(good), fig))[("C5", "m")] == "holds"
    worse = lm_family(lm, matched, [BASE * 2, BASE * 1.5])  # shuffled harder than matched
    row = claims.check(pl.DataFrame(worse), fig).filter(pl.col("claim") == "C5").row(0, named=True)
    assert row["verdict"] == "does not hold" and "shuffled < matched" in row["statistic"]
    few = lm_family(lm[:3], matched[:3], [])
    assert verdicts(claims.check(pl.DataFrame(few), fig))[("C5", "m")] == "inconclusive"


def test_migrated_and_outliers():
    mig = (rows("m", "migrated", "soft", 5, [(f"migrated-g-lm-{i:04d}", 3.0, v) for i, v in enumerate(BASE * 0.8)])
           + rows("m", "matched", "soft", 5, [(f"matched-migrated-g-lm-{i:04d}", 3.0, v) for i, v in enumerate(BASE)]))
    flipped = [dict(r, kl_min=r["kl_min"] * (0.5 if r["target_kind"] == "matched" else 1)) for r in mig]
    fig = {"fig10": {"experiments": ["e"]}}
    assert verdicts(claims.check(pl.DataFrame(mig), fig))[("C6", "m")] == "holds"
    assert verdicts(claims.check(pl.DataFrame(flipped), fig))[("C6", "m")] == "does not hold"

    def outliers(levels, per_level, factor):
        out = []
        for li, h in enumerate(levels):
            for r in range(per_level):
                v = 1.0 + li + 0.1 * r
                out += rows("m", "vanilla", "soft", 5, [(f"vanilla-L{li:03d}-r{r}", h, v)])
                for k, spread in ((1, 0.4), (5, 1.6)):  # the mean over k is factor * v
                    out += rows("m", "outlier", "soft", 5, [(f"outlier-k{k}-L{li:03d}-r{r}", h, v * factor * spread)], n_outliers=k)
        return pl.DataFrame(out, infer_schema_length=None)

    fig7 = {"fig07": {"experiments": ["e"], "model": "m"}}
    assert verdicts(claims.check(outliers([4, 6, 8, 10], 2, 0.7), fig7))[("C4", "m")] == "holds"
    assert verdicts(claims.check(outliers([4, 6, 8, 10], 2, 1.2), fig7))[("C4", "m")] == "does not hold"
    assert verdicts(claims.check(outliers([4, 6], 2, 0.7), fig7))[("C4", "m")] == "inconclusive"


def pos_rows(model, means, draws):
    out = []
    for tag, m in means.items():
        out += rows(model, "pos", "soft", 5, [(f"pos-{tag}-{d:03d}", 6.6, m + 0.01 * d) for d in range(draws)], pos=tag)
    return out


def test_instruct_harder_and_adjectives_easiest():
    tags = {"NOUN": 2.0, "PROPN": 2.5, "VERB": 2.2, "ADJ": 1.0}
    data = pos_rows("base", tags, 6) + pos_rows("base-it", {t: m + 0.3 for t, m in tags.items()}, 6)
    data += pos_rows("small", tags, 3) + pos_rows("noun-easy", dict(tags, NOUN=0.5), 6)
    fig = {"fig13": {"experiment": "e", "pairs": {"base": "base-it", "base-it": "base"}}}
    got = verdicts(claims.check(pl.DataFrame(data), fig))
    assert got[("C8", "base vs base-it")] == "holds"
    assert got[("C8", "base-it vs base")] == "does not hold"
    assert got[("C9", "base")] == "holds" and got[("C9", "base-it")] == "holds"
    assert got[("C9", "noun-easy")] == "does not hold"
    assert got[("C9", "small")] == "inconclusive"
    few = pos_rows("a", tags, 1) + pos_rows("b", {t: m + 0.3 for t, m in tags.items()}, 1)  # 4 pairs
    got = verdicts(claims.check(pl.DataFrame(few), {"fig13": {"experiment": "e", "pairs": {"a": "b"}}}))
    assert got[("C8", "a vs b")] == "inconclusive"
    assert verdicts(claims.check(pl.DataFrame(data), {"fig13": {"experiment": "e"}}))[("C8", "-")] == "inconclusive"


def test_report_is_written(tmp_path):
    t = claims.check(pl.DataFrame(curve("m", [0.0, 3.0, 1.0], 2)), FIG01)
    claims.write_report(t, tmp_path / "c.md", tmp_path / "c.html")
    md = (tmp_path / "c.md").read_text()
    assert "| C1 | soft min KL" in md and "| C9 |" in md and "**inconclusive**" in md and "interval or p" in md
    assert "C1 (Fig. 1)" in md and "Wilcoxon" in md  # the rules are stated
    assert "<table>" in (tmp_path / "c.html").read_text()


def test_tied_pairs_cannot_conclude_and_effect_sizes_share_one_sign():
    """Pairs that do not differ carry no sign (too few differing pairs: inconclusive), and both
    effect sizes are negative when the first group is lower."""
    a, b = np.arange(8.0), np.arange(8.0) + 1
    tied = b.copy()
    tied[:4] = a[:4]  # 4 of 8 pairs differ: fewer than the signed-rank test needs
    assert claims.paired_less(a, tied, "x", ("t",))["verdict"] == claims.INCONCLUSIVE
    paired = claims.paired_less(a, b, "x", ("t",))
    assert paired["verdict"] == claims.HOLDS and "r = -1.00" in paired["statistic"]
    two = claims.rank_sum_less(a, b + 10, "x")
    assert two["verdict"] == claims.HOLDS and "r = -1.00" in two["statistic"]
