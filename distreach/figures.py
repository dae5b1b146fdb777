"""The paper's figures as Altair charts, written as html, png and svg.

Bands are computed here (not by Vega's bootstrap), so a figure is the same
every time it is drawn from the same table."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import polars as pl
from scipy import stats

from .errors import DistreachError
from .io import atomic_path
from .tables import min_over_inits

FORMATS = (".html", ".png", ".svg")


def summarise(df: pl.DataFrame, value: str, by: list[str], level: float | None = None) -> pl.DataFrame:
    """Mean of ``value`` per group with a band: the standard error (level=None) or a
    two-sided t-interval at ``level``."""
    out = (
        df.group_by(by)
        .agg(pl.col(value).mean().alias("mean"), pl.col(value).std().alias("sd"), pl.len().alias("n"))
        .sort(by)
    )
    sem = (pl.col("sd") / pl.col("n").sqrt()).fill_null(0.0)
    if level is None:
        half = sem
    else:
        t = [stats.t.ppf(0.5 + level / 2, n - 1) if n > 1 else 0.0 for n in out["n"]]
        half = sem * pl.Series(t)
    return out.with_columns(lo=pl.col("mean") - half, hi=pl.col("mean") + half)


def _unit(df: pl.DataFrame) -> str:
    units = df["entropy_unit"].unique().to_list()
    if len(units) != 1:
        raise DistreachError(f"results mix entropy units {units}")
    return units[0]


def line_with_band(data: pl.DataFrame, x_title: str, y_title: str, color: str | None, band_title: str):
    base = alt.Chart(data).encode(
        x=alt.X("target_entropy:Q", title=x_title)
    )
    enc = {"color": alt.Color(f"{color}:N", title=color)} if color else {}
    band = base.mark_area(opacity=0.25).encode(
        y=alt.Y("lo:Q", title=y_title), y2="hi:Q", **enc
    )
    line = base.mark_line(point=True).encode(
        y="mean:Q",
        tooltip=["target_entropy:Q", "mean:Q", "lo:Q", "hi:Q", "n:Q"] + ([f"{color}:N"] if color else []),
        **enc,
    )
    return (band + line).properties(width=420, height=280, title=band_title)


def fig01(df: pl.DataFrame) -> alt.Chart:
    """Minimum KL vs target entropy, one line per model, standard-error bands."""
    unit = _unit(df)
    best = min_over_inits(df.filter(pl.col("method") == "soft"))
    s = summarise(best, "kl_min", ["model", "target_entropy"])
    return line_with_band(
        s,
        f"target entropy ({unit})",
        f"min KL(p‖q) over inits ({unit})",
        "model",
        "Soft prompts: minimum KL vs target entropy (mean ± standard error over targets)",
    )


def fig05(df: pl.DataFrame, model: str) -> alt.Chart:
    """Minimum KL and the entropy of q at that minimum vs target entropy, 95% intervals."""
    sub = df.filter((pl.col("model") == model) & (pl.col("method") == "soft"))
    if sub.is_empty():
        raise DistreachError(f"fig05: no soft-prompt results for model {model!r}")
    unit = _unit(sub)
    best = min_over_inits(sub)
    kl = summarise(best, "kl_min", ["target_entropy"], level=0.95)
    ent = summarise(best, "q_entropy", ["target_entropy"], level=0.95)
    left = line_with_band(kl, f"target entropy ({unit})", f"min KL(p‖q) ({unit})", None, f"(a) {model}: minimum KL, 95% CI")
    diag = alt.Chart(ent.select(pl.col("target_entropy"), pl.col("target_entropy").alias("mean"))).mark_line(
        strokeDash=[4, 4], color="gray"
    ).encode(x="target_entropy:Q", y="mean:Q")
    right = line_with_band(
        ent, f"target entropy ({unit})", f"entropy of q at the minimum ({unit})", None, f"(b) {model}: achieved entropy (dashed: y = x), 95% CI"
    )
    return alt.hconcat(left, right + diag)


def save(chart, stem: str | Path) -> list[Path]:
    """Write ``stem``.html/.png/.svg, each atomically."""
    stem = Path(stem)
    written = []
    for ext in FORMATS:
        path = stem.with_suffix(ext)
        with atomic_path(path) as tmp:
            chart.save(str(tmp), format=ext[1:], **({"scale_factor": 2} if ext == ".png" else {}))
        written.append(path)
    return written

