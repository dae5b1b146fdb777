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
    if "comparison" in res:  # the statistics are those of the recorded runs
        assert res["comparison"] == bench.paired(res["rows"])
    if res["kind"] == "context":  # typed back in whole, each target's inputs gave the target
        assert all(abs(r["bits_by_suffix"][str(res["lm_prompt_len"])]) < 1e-4 for r in res["rows"])
        hard = json.loads((path.parent / res["hard"]["file"]).read_text())  # the numbers it sets them against
        assert (res["hard"]["lm_median_bits"], res["hard"]["gcg_lm_median_bits"]) == \
            (hard["lm_median"]["hard_bits"], hard["lm_median"]["gcg_bits"])
        assert res["hard"]["gcg_below_suffix"] == sum(
            g["gcg_bits"] < r["bits_by_suffix"][str(res["prefix_len"])] for g, r in zip(hard["rows"][1:], res["rows"]))


def runs(gcg, nano):
    """Rows of the nanogcg comparison: [targets][seeds] losses per side."""
    return [{"target": f"t{t}", "seed_index": s, "gcg_nats": g, "nanogcg_nats": n}
            for t, (gs, ns) in enumerate(zip(gcg, nano)) for s, (g, n) in enumerate(zip(gs, ns))]


def test_the_nanogcg_comparison_pairs_runs_by_target_and_seed():
    # target t: gcg ends at t + s, nanoGCG at t + s + 1 (s the seed), except one run of target 0
    gcg = [[t + s for s in range(3)] for t in range(10)]
    nano = [[t + s + 1.0 for s in range(3)] for t in range(10)]
    nano[0][2] = -10.0  # target 0: nanoGCG's median 1 equals gcg's, yet gcg ends lower in 2 of its 3 runs
    c = bench.paired(runs(gcg, nano))
    assert (c["targets_gcg_lower"], c["targets_nanogcg_lower"], c["runs_gcg_lower"]) == (10, 0, 29)
    assert c["sign_test_p"] == pytest.approx(2 / 2 ** 10)  # over targets, the independent units
    per = bench.per_target(runs(gcg, nano))
    assert [r["diff_nats"] for r in per] == [-1.0] * 10  # per target the median of its paired differences (-1, -1, +12)
    assert c["median_diff_nats"] == -1.0 and c["median_diff_interval"] == [-1.0, -1.0]
    assert [r["gcg_nats"] for r in per] == [t + 1.0 for t in range(10)]
    assert bench._verdict(c) == "The interval lies below 0: gcg ends lower (better)."
    # a target whose paired differences have median 0 counts for neither side
    tie = bench.paired(runs([[1.0, 2.0, 3.0]] * 6, [[1.0, 2.0, 3.0]] * 3 + [[2.0, 3.0, 4.0]] * 3))
    assert (tie["targets_gcg_lower"], tie["targets_nanogcg_lower"], tie["sign_test_p"]) == (3, 0, 0.25)


def test_the_interval_is_the_order_statistics_with_the_binomial_coverage():
    # 10 values: P(Bin(10, 1/2) <= 1) = 11/1024, so [x_(2), x_(9)] covers 1 - 22/1024 >= 95%; [x_(3), x_(8)] would not
    lo, hi, cover = bench.median_interval([float(v) for v in range(10, 0, -1)])
    assert (lo, hi) == (2.0, 9.0) and cover == pytest.approx(1 - 22 / 1024)
    assert bench.median_interval([1.0] * 5)[:2] == (-float("inf"), float("inf"))  # 5 values hold no 95% interval
    holds = {"median_diff_interval": [-0.5, 2.0]}
    assert bench._verdict(holds) == ("The interval holds 0: these runs do not tell the two apart; the median per-target "
                                     "difference may lie anywhere from -0.50 to +2.00 nats, so 'no worse' is not shown.")
    assert bench._verdict({"median_diff_interval": [-float("inf"), float("inf")]}).startswith("Too few targets")
    assert bench._verdict({"median_diff_interval": [0.1, 2.0]}).startswith("The interval lies above 0: gcg ends higher")


def test_the_comparison_refuses_unequal_runs_per_target_and_non_finite_losses():
    with pytest.raises(ValueError, match="same number of runs per target"):
        bench.paired(runs([[1.0, 2.0], [1.0]], [[1.0, 2.0], [1.0]]))
    with pytest.raises(ValueError, match="not finite"):
        bench.paired(runs([[1.0, float("nan")]] * 6, [[1.0, 2.0]] * 6))
    with pytest.raises(ValueError, match="same number of runs per target"):
        bench.paired([])
    # the benchmark keeps its runs and says why they could not be compared
    bad = {"kind": "nanogcg", "rows": runs([[1.0, 2.0], [1.0]], [[1.0, 2.0], [1.0]])}
    bad["comparison"] = bench.comparison(bad["rows"])
    with pytest.raises(SystemExit, match="could not be compared: the comparison needs the same number"):
        bench.table(bad)


def test_the_interval_excludes_0_at_most_as_often_as_its_level_allows_when_the_searches_are_one():
    """Calibration where the claim 'gcg differs' is false: both sides' losses from one heavy-tailed
    distribution, with target effects (two runs of one search; the interval's coverage, 97.9% at
    10 targets, holds for any continuous distribution of independent per-target differences); and
    power: a threefold loss on one side is found most of the time."""
    rng = np.random.default_rng(5)

    def excluded(scale):
        hits = 0
        for _ in range(400):
            target = rng.lognormal(0, 0.7, (10, 1))
            gcg, nano = scale * target * rng.lognormal(0, 1, (10, 5)), target * rng.lognormal(0, 1, (10, 5))
            lo, hi = bench.paired(runs(gcg.tolist(), nano.tolist()))["median_diff_interval"]
            hits += not lo <= 0 <= hi
        return hits / 400

    assert excluded(1.0) <= 0.035  # about 2.1% expected
    assert excluded(3.0) >= 0.5


def test_the_bar_verdict_says_missed_only_when_no_budget_up_to_the_last_can_meet_it():
    # hard 1.3 bits at the first mark's budget: gcg must reach 0.325 there or later
    assert bench.bar_verdict({"60": 0.9, "300": 0.5}, 1.3, 2.0) == pytest.approx((0.325, 2.0 / 0.9, True))
    assert bench.bar_verdict({"60": 0.9, "300": 0.3}, 1.3, 2.0)[2] is False  # reached by the last mark
    assert bench.bar_verdict({"60": 0.45, "300": 0.4}, 1.3, 2.0)[2] is False  # below 60's budget the ratio may be 4.4x


def test_lowest_reached_counts_the_rows_a_patience_leaves_at_the_runs_lowest():
    rows = [{"patience": {"20": {"best_bits": b}}, "best_bits_by_step": {"300": 0.5}} for b in (0.5, 0.6, 0.5, 0.7)]
    assert bench.lowest_reached(rows, "20", "300") == 2


def steps_result(first_mark: int) -> dict:
    return {"kind": "steps", "rows": [{"target": "capitals", "best_bits_by_step": {str(first_mark): 2.0, "300": 1.5}}] +
            [{"target": f"lm-{i}"} for i in range(3)],
            "lm_median_by_step": {str(first_mark): 0.9, "300": 0.5}, "lm_median_by_patience": {}, "forward_passes_per_step": 33,
            "seconds": 1.0, "min_delta": 1e-4, "gcg_width": 32,
            "hard": {"file": "gcg-hard.json", "gcg_steps": 60, "gcg_width": 32, "lm_median_bits": 1.3,
                     "lm_median_first_init_bits": 2.0, "gcg_lm_median_bits": 0.9, "capitals_hard_bits": 6.0}}


def test_the_steps_summary_sets_the_run_against_the_bar_only_at_the_comparisons_budget():
    said = bench._steps_findings(steps_result(60))
    assert "the bar is not met at any of these budgets" in said and "(the capitals target: 3.0x" in said
    assert "Against a bar" not in bench._steps_findings(steps_result(30))  # another budget than the comparison's
    other_width = steps_result(60)
    other_width["gcg_width"] = 64
    assert "Against a bar" not in bench._steps_findings(other_width)
    other_run = steps_result(60)
    other_run["hard"]["gcg_lm_median_bits"] = 0.8  # not the comparison's gcg run
    assert "Against a bar" not in bench._steps_findings(other_run)


def test_the_recorded_steps_run_is_the_comparisons_gcg_run_and_names_its_numbers():
    res = json.loads((REPO / "benchmarks" / "results" / "cpu" / "gcg-steps.json").read_text())
    hard = json.loads((REPO / "benchmarks" / "results" / "cpu" / "gcg-hard.json").read_text())
    assert res["hard"]["lm_median_bits"] == hard["lm_median"]["hard_bits"]
    assert res["hard"]["lm_median_first_init_bits"] == hard["lm_median"]["hard_first_init_bits"]
    assert res["hard"]["capitals_hard_bits"] == hard["rows"][0]["hard_bits"]
    first = str(hard["gcg_steps"])
    for mine, theirs in zip(res["rows"], hard["rows"], strict=True):
        assert mine["target"] == theirs["target"]
        assert mine["best_bits_by_step"][first] == pytest.approx(theirs["gcg_bits"], rel=1e-9)
