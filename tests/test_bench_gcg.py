"""benchmarks/gcg.py: the hard method's share of forward passes, and the README's tables and
sentences are those of the recorded results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from .conftest import load_script

REPO = Path(__file__).resolve().parents[1]
bench = load_script(REPO / "benchmarks" / "gcg.py")


class FakeResult:
    def __init__(self, steps, kls):
        self.steps, self.kl_min = np.array(steps), np.array(kls, dtype=float)


def test_hard_gets_the_inits_that_fit_in_the_budget_and_no_more(monkeypatch):
    """Each hard init of target 0 runs 10 steps with KL 3, 2, 1, 0.5, ...; of target 1, 12 steps
    with KL 5, 4, ...: a budget of 25 forward passes holds two inits of each (20 and 24 steps)."""
    calls, counter = [], {0: 0, 1: 0}

    def fake_tune(loaded, probs, seeds, cfg):
        calls.append(list(seeds))
        steps, kls = [], []
        for t in probs.tolist():
            steps.append(10 if t == 0 else 12)
            kls.append((3.0 if t == 0 else 5.0) - counter[t])
            counter[t] += 1
        return FakeResult(steps, kls)

    monkeypatch.setattr(bench, "tune", fake_tune)
    probs = np.array([0, 1])  # stands for the two targets' rows: fake_tune reads the index
    best, first, rows = bench.hard_at_budget(None, probs, [100, 200], 25, cfg=None)
    assert first.tolist() == [3.0, 5.0]  # the first init is the one from the given seed
    assert best.tolist() == [2.0, 4.0]  # the second init fits (20, 24 steps), the third does not
    assert calls[0] == [100, 200]


RESULTS = sorted((REPO / "benchmarks" / "results" / "cpu").glob("gcg-*.json"))


@pytest.mark.parametrize("path", RESULTS, ids=[p.stem for p in RESULTS])
def test_readme_shows_the_recorded_results(path):
    res = json.loads(path.read_text())
    readme = (REPO / "benchmarks" / "README.md").read_text()
    assert bench.table(res) in readme
    assert bench.summary(res) in readme


def runs(gcg, nano):
    """Rows of the nanogcg comparison: [targets][seeds] losses per side."""
    return [{"target": f"t{t}", "seed_index": s, "gcg_nats": g, "nanogcg_nats": n}
            for t, (gs, ns) in enumerate(zip(gcg, nano)) for s, (g, n) in enumerate(zip(gs, ns))]


def test_the_nanogcg_comparison_pairs_runs_and_bounds_the_difference_of_medians():
    # gcg ends lower in every run by 1 nat: the sign test's two-sided p is 2 / 2^n, the interval is -1
    rows = runs([[1.0, 2.0, 3.0]] * 4, [[2.0, 3.0, 4.0]] * 4)
    res = bench.paired(rows, resamples=200)
    assert (res["gcg_lower"], res["nanogcg_lower"]) == (12, 0)
    assert res["sign_test_p"] == pytest.approx(2 / 2 ** 12)
    assert res["median_diff_nats"] == -1.0 and res["median_diff_ci95"] == [-1.0, -1.0]
    assert bench._verdict(res).startswith("The interval excludes 0: gcg's median is lower")
    # per target, the median over its seeds: the medians over targets are 2 and 3
    assert [r["gcg_nats"] for r in bench.per_target(rows)] == [2.0] * 4
    # the same losses shuffled between the sides within each target: no side lower more often than chance
    rng = np.random.default_rng(1)
    gcg = rng.lognormal(0, 1, (10, 5))
    nano = np.where(rng.random((10, 5)) < 0.5, gcg * 2, gcg / 2)
    res = bench.paired(runs(gcg.tolist(), nano.tolist()), resamples=500)
    assert res["gcg_lower"] + res["nanogcg_lower"] == 50
    lo, hi = res["median_diff_ci95"]
    assert lo < res["median_diff_nats"] < hi
    # a tie counts for neither side
    tie = bench.paired(runs([[1.0, 2.0]], [[1.0, 3.0]]), resamples=50)
    assert (tie["gcg_lower"], tie["nanogcg_lower"], tie["sign_test_p"]) == (1, 0, 1.0)


def test_the_interval_rarely_excludes_0_when_the_two_searches_are_one():
    """Calibration, in the least favourable case for 'the interval excludes 0': both sides' losses
    drawn from one heavy-tailed distribution (with target effects), as two runs of one search are."""
    rng = np.random.default_rng(5)
    excluded = 0
    for _ in range(100):
        target = rng.lognormal(0, 0.7, (10, 1))
        gcg, nano = target * rng.lognormal(0, 1, (10, 5)), target * rng.lognormal(0, 1, (10, 5))
        lo, hi = bench.paired(runs(gcg.tolist(), nano.tolist()), resamples=400)["median_diff_ci95"]
        excluded += not lo <= 0 <= hi
    assert excluded <= 5
