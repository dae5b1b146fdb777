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
