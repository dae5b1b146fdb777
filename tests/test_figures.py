"""The figure registry: every registered figure has a drawing function and a config schema entry,
and the experiments a figure reads come from one helper; figures read the data as the paper does."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml

from distreach import figreg, figures

REPO = Path(__file__).resolve().parents[1]


def test_every_figure_is_registered_drawn_and_configurable():
    schema = yaml.safe_load((REPO / "schemas/config.schema.yaml").read_text())
    assert set(figures.DRAW) == set(figreg.FIGURES) == set(schema["properties"]["figures"]["properties"])
    # every caption names its paper figure and what a band, bar, box or point stands for
    spread = ("standard error", "t-interval", "quartiles", "one point per target", "single inits", "shares per model")
    for fig, entry in figreg.FIGURES.items():
        assert entry.caption.endswith(f"(paper Fig. {int(fig[3:])}).") and any(s in entry.caption for s in spread), fig


def test_figure_inputs():
    assert figreg.figure_experiments({"experiment": "a", "model": "m"}) == ["a"]
    assert figreg.figure_experiments({"experiments": ["a", "b"]}) == ["a", "b"]
    assert figreg.figure_experiments({"models": ["m"]}) == []
    assert figreg.figure_inputs("fig05", {"experiment": "a", "model": "m"}) == {"tables": ["results/collected/a.arrow"]}
    assert figreg.figure_inputs("fig12", {"models": ["m", "n"]}) == {"pos": ["results/pos/m.arrow", "results/pos/n.arrow"]}


def best_rows(items, **extra):
    return pl.DataFrame([dict(model="m", method="soft", target_entropy=3.0, entropy_unit="bits", **extra, **it) for it in items])


def test_fig09_takes_the_minimum_over_each_targets_shuffled_copies():
    best = best_rows([
        dict(target_kind="lm", target_id="lm-0000", kl_min=0.1),
        dict(target_kind="shuffled", target_id="lm-0000-shuffled0", kl_min=2.0),
        dict(target_kind="shuffled", target_id="lm-0000-shuffled1", kl_min=1.0),
        dict(target_kind="shuffled", target_id="lm-0001-shuffled0", kl_min=0.5),
        dict(target_kind="shuffled", target_id="lm-0001-shuffled1", kl_min=3.0),
    ])
    got = figures.min_over_shuffles(best)
    assert got.select("target_id", "kl_min").rows() == [("lm-0000", 1.0), ("lm-0001", 0.5)]


def test_fig10_has_one_matched_series_per_source_model():
    best = best_rows([
        dict(target_kind="migrated", target_id="migrated-a-lm-0000", source_model="a", kl_min=0.1),
        dict(target_kind="migrated", target_id="migrated-b-lm-0000", source_model="b", kl_min=0.2),
        dict(target_kind="matched", target_id="matched-migrated-a-lm-0000", source_model=None, kl_min=1.0),
        dict(target_kind="matched", target_id="matched-migrated-b-lm-0000", source_model=None, kl_min=2.0),
    ])
    got = dict(figures.migrated_series(best).select("target_id", "targets").iter_rows())
    assert got["matched-migrated-a-lm-0000"] == "matched to migrated from a"
    assert got["matched-migrated-b-lm-0000"] == "matched to migrated from b"
    assert got["migrated-b-lm-0000"] == "migrated from b"
