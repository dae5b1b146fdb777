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
    two-sided t-interval at ``level``; bands stop at 0 (KL and entropy are never negative)."""
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
    return out.with_columns(lo=(pl.col("mean") - half).clip(lower_bound=0.0), hi=pl.col("mean") + half)


def _unit(df: pl.DataFrame) -> str:
    units = df["entropy_unit"].unique().to_list()
    if len(units) != 1:
        raise DistreachError(f"results mix entropy units {units}")
    return units[0]


def line_with_band(data: pl.DataFrame, x_title: str, y_title: str, color: str | None, band_title: str, sort=None):
    base = alt.Chart(data).encode(
        x=alt.X("target_entropy:Q", title=x_title)
    )
    enc = {"color": alt.Color(f"{color}:N", title=color, sort=sort)} if color else {}
    band = base.mark_area(opacity=0.25).encode(
        y=alt.Y("lo:Q", title=y_title), y2="hi:Q", **enc
    )
    line = base.mark_line(point=True).encode(
        y="mean:Q",
        tooltip=["target_entropy:Q", "mean:Q", "lo:Q", "hi:Q", "n:Q"] + ([f"{color}:N"] if color else []),
        **enc,
    )
    return (band + line).properties(width=420, height=280, title=band_title)


def read_tables(paths) -> pl.DataFrame:
    """Collected tables, concatenated (columns missing from one table are null there)."""
    return pl.concat([pl.read_ipc(p) for p in paths], how="diagonal_relaxed")


def _model(df: pl.DataFrame, model: str, fig: str) -> pl.DataFrame:
    sub = df.filter(pl.col("model") == model)
    if sub.is_empty():
        raise DistreachError(f"{fig}: no results for model {model!r}")
    return sub


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
    sub = _model(df, model, "fig05").filter(pl.col("method") == "soft")
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


def fig04(df: pl.DataFrame, model: str) -> alt.Chart:
    """Hard, hybrid and soft prompts on one model: every init as a point, the minimum over
    inits (mean over targets) as a line, one panel per method."""
    sub = _model(df, model, "fig04").filter(pl.col("status") == "ok")
    unit = _unit(sub)
    order = sub.select("method", "n_soft").unique().sort("n_soft")
    labels = {r["method"]: f"{r['method']} ({r['n_soft']} soft)" for r in order.to_dicts()}
    sub = sub.with_columns(prompt=pl.col("method").replace_strict(labels))
    best = summarise(min_over_inits(sub), "kl_min", ["method", "target_entropy"])
    data = sub.join(best.select("method", "target_entropy", pl.col("mean").alias("best_mean")), on=["method", "target_entropy"])
    # only what the chart shows; prompt text with control characters escaped (SVG/PNG are XML)
    data = data.select(
        "prompt", "target_entropy", "kl_min", "init_index", "target_id", "best_mean",
        pl.col("prompt_text").map_elements(lambda t: t.encode("unicode_escape").decode("ascii"), return_dtype=pl.String),
    )
    x = alt.X("target_entropy:Q", title=f"target entropy ({unit})")
    sort = [labels[m] for m in order["method"]]
    base = alt.Chart(data)
    points = base.mark_circle(size=30, opacity=0.6).encode(
        x=x, y=alt.Y("kl_min:Q", title=f"KL(p‖q) ({unit})"), color=alt.Color("init_index:N", title="init"),
        tooltip=["target_id:N", "init_index:N", "kl_min:Q", "prompt_text:N"],
    )
    line = base.mark_line(color="black").encode(x=x, y="mean(best_mean):Q")
    return alt.layer(points, line).properties(width=220, height=200).facet(
        facet=alt.Facet("prompt:N", sort=sort, title=f"{model}: points = inits, line = mean over targets of the minimum over inits"),
        columns=3,
    ).resolve_scale(y="shared")


def fig06(df: pl.DataFrame, pairs: dict) -> alt.Chart:
    """Each pretrained model against its randomly initialised twin, one panel per model."""
    unit = _unit(df)
    rows = []
    for pre, rnd in pairs.items():
        for name, kind in ((pre, "pretrained"), (rnd, "random init")):
            best = min_over_inits(_model(df, name, "fig06").filter(pl.col("method") == "soft"))
            rows.append(summarise(best, "kl_min", ["target_entropy"]).with_columns(
                panel=pl.lit(pre), weights=pl.lit(kind)))
    data = pl.concat(rows)
    base = alt.Chart(data).encode(x=alt.X("target_entropy:Q", title=f"target entropy ({unit})"),
                                  color=alt.Color("weights:N", title="weights"))
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("lo:Q", title=f"min KL(p‖q) ({unit})"), y2="hi:Q")
    line = base.mark_line(point=True).encode(y="mean:Q", strokeDash=alt.StrokeDash("weights:N", legend=None))
    return alt.layer(band, line).properties(width=260, height=220).facet(
        facet=alt.Facet("panel:N", title="pretrained vs randomly initialised (mean ± s.e. over targets)"), columns=3
    ).resolve_scale(y="independent")


def fig11(df: pl.DataFrame, model: str) -> alt.Chart:
    """Soft-prompt minimum KL vs target entropy for several prefix lengths on one model."""
    sub = _model(df, model, "fig11").filter(pl.col("method") == "soft")
    unit = _unit(sub)
    s = summarise(min_over_inits(sub), "kl_min", ["prefix_len", "target_entropy"])
    return line_with_band(
        s.with_columns(pl.col("prefix_len").cast(pl.String).alias("prefix")),
        f"target entropy ({unit})", f"min KL(p‖q) over inits ({unit})", "prefix",
        f"{model}: soft prompts of several lengths (mean ± standard error over targets)",
        sort=[str(n) for n in sorted(s["prefix_len"].unique())],
    )


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

