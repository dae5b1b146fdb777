"""The figure registry: every registered figure has a drawing function and a config schema entry,
and the experiments a figure reads come from one helper."""

from __future__ import annotations

from pathlib import Path

import yaml

from distreach import figreg, figures

REPO = Path(__file__).resolve().parents[1]


def test_every_figure_is_registered_drawn_and_configurable():
    schema = yaml.safe_load((REPO / "schemas/config.schema.yaml").read_text())
    assert set(figures.DRAW) == set(figreg.FIGURES) == set(schema["properties"]["figures"]["properties"])
    for fig, draw in figures.DRAW.items():
        assert draw.__doc__ == figreg.FIGURES[fig].caption


def test_figure_inputs():
    assert figreg.figure_experiments({"experiment": "a", "model": "m"}) == ["a"]
    assert figreg.figure_experiments({"experiments": ["a", "b"]}) == ["a", "b"]
    assert figreg.figure_experiments({"models": ["m"]}) == []
    assert figreg.figure_inputs("fig05", {"experiment": "a", "model": "m"}) == {"tables": ["results/collected/a.arrow"]}
    assert figreg.figure_inputs("fig12", {"models": ["m", "n"]}) == {"pos": ["results/pos/m.arrow", "results/pos/n.arrow"]}
