"""The paper's figures, each described once: what it shows (its report caption), what it reads
and, in ``distreach.figures``, the function that draws it.

This module imports nothing heavy, so the workflow reads it while planning: the ``figure`` rule
takes its figure numbers, inputs and captions from here. The drawing functions register
themselves in ``distreach.figures.DRAW`` under the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    caption: str
    reads: str = "collected"  # "collected": its experiments' collected tables; "pos": its models' POS tables


FIGURES: dict[str, Figure] = {
    "fig01": Figure(
        "Minimum KL divergence between target and prompted next-token distribution against target entropy, "
        "one line per model, with standard-error bands over targets (paper Fig. 1)."
    ),
    "fig04": Figure(
        "Minimum KL against target entropy on one model for hard, hybrid (several numbers of soft positions) "
        "and soft prompts; small points are single inits, lines the minimum over inits (paper Fig. 4)."
    ),
    "fig05": Figure(
        "Minimum KL and the entropy of the prompted distribution at that minimum against target entropy on "
        "one model, with 95% confidence intervals (paper Fig. 5)."
    ),
    "fig06": Figure(
        "Minimum KL against target entropy for each pretrained model and its randomly initialised twin, "
        "one panel per model (paper Fig. 6)."
    ),
    "fig07": Figure(
        "Mean minimum KL (a) and entropy of the prompted distribution (b) for targets with k outlier tokens "
        "and for vanilla targets of the same entropies, with 95% confidence intervals (paper Fig. 7)."
    ),
    "fig08": Figure(
        "Hard-prompt minimum KL on the model's own next-token distributions and on vanilla targets of "
        "matched entropy, with least-squares lines and their R² (a), and the achieved entropy (b) "
        "(paper Fig. 8)."
    ),
    "fig09": Figure(
        "Soft-prompt minimum KL on LM-generated targets, on their token-shuffled copies and on vanilla "
        "targets of matched entropy, with least-squares lines and R² (paper Fig. 9)."
    ),
    "fig10": Figure(
        "Soft-prompt minimum KL on next-token distributions of another model mapped onto the tuning model's "
        "vocabulary, against vanilla targets of matched entropy, one panel per tuning model (paper Fig. 10)."
    ),
    "fig11": Figure(
        "Soft-prompt minimum KL against target entropy for several prefix lengths on one model, with "
        "standard-error bands (paper Fig. 11)."
    ),
    "fig12": Figure(
        "Share of each of the most common parts of speech among the English tokens of each model's "
        "vocabulary that spaCy tags as one token with one unambiguous POS (paper Fig. 12).",
        reads="pos",
    ),
    "fig13": Figure(
        "Minimum KL over inits of soft prompts on uniform distributions over tokens of one part of speech, "
        "per POS and model, base and instruction-tuned variants side by side (paper Fig. 13)."
    ),
}


def figure_experiments(spec: dict) -> list[str]:
    """The experiments a figure's config entry (``figures.figNN``) reads: ``experiments`` or
    ``experiment``; none for a figure of POS tables."""
    if spec.get("experiments"):
        return list(spec["experiments"])
    return [spec["experiment"]] if spec.get("experiment") else []


def figure_inputs(fig: str, spec: dict) -> dict[str, list[str]]:
    """The files figure ``fig`` draws from, by kind: ``tables`` (collected tables of its
    experiments) or ``pos`` (the POS tables of its ``models``)."""
    if FIGURES[fig].reads == "pos":
        return {"pos": [f"results/pos/{m}.arrow" for m in spec["models"]]}
    return {"tables": [f"results/collected/{e}.arrow" for e in figure_experiments(spec)]}
