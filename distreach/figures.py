"""The paper's figures as Altair charts, written as html, png and svg.

Bands are computed here (not by Vega's bootstrap), so a figure is the same
every time it is drawn from the same table."""

from __future__ import annotations

import json
from pathlib import Path

import altair as alt
import numpy as np
import polars as pl

from .errors import DistreachError
from .figureregistry import FIGURES
from .io import atomic_path
from .offline import InlineTemplate
from .tables import min_over_inits, min_over_shuffles, read_tables, source_ids

FORMATS = (".html", ".png", ".svg")
DRAW = {}  # figure number -> function(data, spec) -> chart; what each draws: distreach.figureregistry.FIGURES


def figure(fig: str):
    """Register a drawing function ``(data, spec) -> chart`` for figure ``fig``: ``data`` is what
    the figure reads (collected tables, or POS tables), ``spec`` its entry in the config's
    ``figures``. Its docstring is the figure's caption."""

    def register(draw):
        draw.__doc__ = FIGURES[fig].caption
        DRAW[fig] = draw
        return draw

    return register


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
        from scipy import stats  # here: importing scipy.stats is a large share of a figure job's start, and most figures draw no t-interval

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
        y=alt.Y("lo:Q", title=y_title, scale=alt.Scale(domainMin=0)), y2="hi:Q", **enc
    )
    line = base.mark_line(point=True).encode(
        y="mean:Q",
        tooltip=["target_entropy:Q", "mean:Q", "lo:Q", "hi:Q", "n:Q"] + ([f"{color}:N"] if color else []),
        **enc,
    )
    return (band + line).properties(width=420, height=280, title=band_title)


def _model(df: pl.DataFrame, model: str, fig: str) -> pl.DataFrame:
    sub = df.filter(pl.col("model") == model)
    if sub.is_empty():
        raise DistreachError(f"{fig}: no results for model {model!r}")
    return sub


def _best(df: pl.DataFrame, model: str | None, fig: str, method: str | None = None) -> pl.DataFrame:
    """The minimum over inits of the rows (of ``model`` where given) of ``method``: the figure's own
    (its registry entry's ``method``) where None."""
    if method is None and fig in FIGURES:
        method = FIGURES[fig].method
    sub = _model(df, model, fig) if model else df
    if method is not None:
        sub = sub.filter(pl.col("method") == method)
        if sub.is_empty():
            raise DistreachError(f"{fig}: no {method}-prompt results")
    return min_over_inits(sub)


@figure("fig01")
def fig01(df: pl.DataFrame, spec: dict) -> alt.Chart:
    unit = _unit(df)
    s = summarise(_best(df, None, "fig01"), "kl_min", ["model", "target_entropy"])
    return line_with_band(
        s,
        f"target entropy ({unit})",
        f"min KL(p‖q) over inits ({unit})",
        "model",
        "Soft prompts: minimum KL vs target entropy (mean ± standard error over targets)",
    )


@figure("fig05")
def fig05(df: pl.DataFrame, spec: dict) -> alt.Chart:
    model = spec["model"]
    best = _best(df, model, "fig05")
    unit = _unit(best)
    kl = summarise(best, "kl_min", ["target_entropy"], level=0.95)
    ent = summarise(best, "q_entropy", ["target_entropy"], level=0.95)
    left = line_with_band(kl, f"target entropy ({unit})", f"min KL(p‖q) ({unit})", None, f"(a) {model}: minimum KL, mean and 95% t-interval over targets")
    diag = alt.Chart(ent.select(pl.col("target_entropy"), pl.col("target_entropy").alias("mean"))).mark_line(
        strokeDash=[4, 4], color="gray"
    ).encode(x="target_entropy:Q", y="mean:Q")
    right = line_with_band(
        ent, f"target entropy ({unit})", f"entropy of q at the minimum ({unit})", None, f"(b) {model}: achieved entropy (dashed: y = x), mean and 95% t-interval over targets"
    )
    return alt.hconcat(left, right + diag)


@figure("fig04")
def fig04(df: pl.DataFrame, spec: dict) -> alt.Chart:
    model = spec["model"]
    sub = _model(df, model, "fig04").filter(pl.col("status") == "ok")
    unit = _unit(sub)
    order = sub.select("method", "n_soft").unique().sort("n_soft", "method")
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
        x=x, y=alt.Y("kl_min:Q", title=f"KL(p‖q) ({unit})", scale=alt.Scale(domainMin=0)),
        color=alt.Color("init_index:N", title="init"),
        tooltip=["target_id:N", "init_index:N", "kl_min:Q", "prompt_text:N"],
    )
    line = base.mark_line(color="black").encode(x=x, y="mean(best_mean):Q")
    return alt.layer(points, line).properties(width=220, height=200).facet(
        facet=alt.Facet("prompt:N", sort=sort, title=f"{model}: points = inits, line = mean over targets of the minimum over inits"),
        columns=3,
    ).resolve_scale(y="shared")


@figure("fig06")
def fig06(df: pl.DataFrame, spec: dict) -> alt.Chart:
    pairs = spec["pairs"]
    unit = _unit(df)
    rows = []
    for pre, rnd in pairs.items():
        for name, kind in ((pre, "pretrained"), (rnd, "random init")):
            best = _best(df, name, "fig06")
            rows.append(summarise(best, "kl_min", ["target_entropy"]).with_columns(
                panel=pl.lit(pre), weights=pl.lit(kind)))
    data = pl.concat(rows)
    base = alt.Chart(data).encode(x=alt.X("target_entropy:Q", title=f"target entropy ({unit})"),
                                  color=alt.Color("weights:N", title="weights"))
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("lo:Q", title=f"min KL(p‖q) ({unit})", scale=alt.Scale(domainMin=0)),
                                              y2="hi:Q")
    line = base.mark_line(point=True).encode(y="mean:Q", strokeDash=alt.StrokeDash("weights:N", legend=None))
    return alt.layer(band, line).properties(width=260, height=220).facet(
        facet=alt.Facet("panel:N", title="pretrained vs randomly initialised (mean ± s.e. over targets)"), columns=3
    ).resolve_scale(y="independent")


@figure("fig11")
def fig11(df: pl.DataFrame, spec: dict) -> alt.Chart:
    model = spec["model"]
    best = _best(df, model, "fig11")
    unit = _unit(best)
    s = summarise(best, "kl_min", ["prefix_len", "target_entropy"])
    return line_with_band(
        s.with_columns(pl.col("prefix_len").cast(pl.String).alias("prefix")),
        f"target entropy ({unit})", f"min KL(p‖q) over inits ({unit})", "prefix",
        f"{model}: soft prompts of several lengths (mean ± standard error over targets)",
        sort=[str(n) for n in sorted(s["prefix_len"].unique())],
    )


def _with_diagonal(chart, data: pl.DataFrame):
    diag = alt.Chart(data.select(pl.col("target_entropy"), pl.col("target_entropy").alias("y"))).mark_line(
        strokeDash=[4, 4], color="gray"
    ).encode(x="target_entropy:Q", y="y:Q")
    return chart + diag


@figure("fig07")
def fig07(df: pl.DataFrame, spec: dict) -> alt.Chart:
    model = spec["model"]
    best = _best(df, model, "fig07")
    if "n_outliers" not in best.columns:
        raise DistreachError("fig07: none of its experiments has outlier targets")
    unit = _unit(best)
    best = best.with_columns(
        targets=pl.when(pl.col("target_kind") == "outlier")
        .then(pl.format("{} outlier(s)", pl.col("n_outliers")))
        .otherwise(pl.col("target_kind"))
    )
    kl = summarise(best, "kl_min", ["targets", "target_entropy"], level=0.95)
    ent = summarise(best, "q_entropy", ["targets", "target_entropy"], level=0.95)
    x = f"target entropy ({unit})"
    left = line_with_band(kl, x, f"min KL(p‖q) ({unit})", "targets", f"(a) {model}: minimum KL, mean and 95% t-interval over targets")
    right = line_with_band(ent, x, f"entropy of q at the minimum ({unit})", "targets", "(b) achieved entropy (dashed: y = x), mean and 95% t-interval over targets")
    return alt.hconcat(left, _with_diagonal(right, ent))


def _fit_label(best: pl.DataFrame, by: str) -> pl.DataFrame:
    """Append each group's least-squares line of kl_min on target entropy, with R², to its label."""
    labels = {}
    for (key,), g in best.group_by([by]):
        x, y = g["target_entropy"].to_numpy(), g["kl_min"].to_numpy()
        if len(g) > 2 and np.ptp(x) > 0:
            slope, icpt = np.polyfit(x, y, 1)
            r2 = 1 - ((y - (slope * x + icpt)) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-300)
            labels[key] = f"{key} (R² = {r2:.2f})"
        else:
            labels[key] = str(key)
    return best.with_columns(pl.col(by).replace_strict(labels).alias(by))


def entropy_x(unit: str, title: str = "target entropy") -> alt.X:
    """A target-entropy axis fitted to the data (not stretched to 0: LM-generated targets start
    at several bits)."""
    return alt.X("target_entropy:Q", title=f"{title} ({unit})", scale=alt.Scale(zero=False))


def _scatter_fit(best: pl.DataFrame, by: str, unit: str, title: str):
    base = alt.Chart(best.select(by, "target_entropy", "kl_min", "target_id")).encode(
        x=entropy_x(unit), color=alt.Color(f"{by}:N", title=None, legend=alt.Legend(orient="bottom", direction="vertical"))
    )
    points = base.mark_circle(size=35, opacity=0.6).encode(
        y=alt.Y("kl_min:Q", title=f"min KL(p‖q) over inits ({unit})", scale=alt.Scale(domainMin=0)),
        tooltip=["target_id:N", "kl_min:Q"],
    )
    # each series' least-squares line over its own targets' entropies (Vega's default extent), cut at
    # KL = 0 where it would fall below (KL is never negative)
    line = base.transform_regression("target_entropy", "kl_min", groupby=[by]).mark_line(clip=True).encode(y="kl_min:Q")
    return (points + line).properties(width=380, height=280, title=title)


@figure("fig08")
def fig08(df: pl.DataFrame, spec: dict) -> alt.Chart:
    model = spec["model"]
    best = _best(df, model, "fig08")
    unit = _unit(best)
    best = _fit_label(best.with_columns(pl.col("target_kind").alias("targets")), "targets")
    left = _scatter_fit(best, "targets", unit, f"(a) {model}, hard prompts: points = targets (min over inits), lines = least-squares fits")
    pts = alt.Chart(best.select("targets", "target_entropy", "q_entropy")).mark_circle(size=35, opacity=0.6).encode(
        x=entropy_x(unit),
        y=alt.Y("q_entropy:Q", title=f"entropy of q at the minimum ({unit})", scale=alt.Scale(zero=False)),
        color=alt.Color("targets:N", title=None, legend=alt.Legend(orient="bottom", direction="vertical")),
    )
    right = _with_diagonal(pts, best).properties(width=380, height=280, title="(b) achieved entropy at the minimum, one point per target (dashed: y = x)")
    return alt.hconcat(left, right)


SHUFFLED_MIN = "shuffled (min over copies)"


@figure("fig09")
def fig09(df: pl.DataFrame, spec: dict) -> alt.Chart:
    model = spec["model"]
    best = _best(df, model, "fig09")
    unit = _unit(best)
    copies = best.filter(pl.col("target_kind") == "shuffled")
    main = pl.concat([best.filter(pl.col("target_kind") != "shuffled"), min_over_shuffles(best)], how="diagonal_relaxed")
    main = main.with_columns(targets=pl.col("target_kind").replace({"shuffled": SHUFFLED_MIN}))
    chart = _scatter_fit(
        _fit_label(main, "targets"), "targets", unit,
        f"{model}, soft prompts: points = targets (min over inits), lines = least-squares fits; grey = single shuffled copies",
    )
    if copies.is_empty():
        return chart
    layer = alt.Chart(copies.select("target_entropy", "kl_min", "target_id")).mark_circle(size=15, opacity=0.25, color="gray").encode(
        x=entropy_x(unit), y="kl_min:Q", tooltip=["target_id:N", "kl_min:Q"]
    )
    return layer + chart


def migrated_series(best: pl.DataFrame) -> pl.DataFrame:
    """Fig. 10's series (column ``targets``): migrated targets by source model, and each matched
    vanilla target in the series of the migrated target it matches (its ``source_target_id``), so
    every source model has its own matched series."""
    if "source_model" not in best.columns:
        raise DistreachError("fig10: none of its experiments has migrated targets")
    source = dict(best.filter(pl.col("target_kind") == "migrated").select("target_id", "source_model").unique().iter_rows())
    src = source_ids(best).replace_strict(source, default=None)
    return best.with_columns(
        targets=pl.when(pl.col("target_kind") == "migrated")
        .then(pl.format("migrated from {}", pl.col("source_model")))
        .when(src.is_not_null())
        .then(pl.format("matched to migrated from {}", src))
        .otherwise(pl.col("target_kind"))
    )


@figure("fig10")
def fig10(df: pl.DataFrame, spec: dict) -> alt.Chart:
    best = migrated_series(_best(df, None, "fig10"))
    unit = _unit(best)
    panels = []
    for model in best["model"].unique().sort().to_list():
        sub = _fit_label(best.filter(pl.col("model") == model), "targets")
        panels.append(_scatter_fit(sub, "targets", unit, f"tuned on {model}: points = targets (min over inits), lines = least-squares fits"))
    return alt.hconcat(*panels).resolve_scale(color="independent")


def pos_shares(pos: pl.DataFrame, top: int = 8) -> tuple[pl.DataFrame, list[str]]:
    """Share of each POS among each model's English tokens with one unambiguous POS, for the
    ``top`` most common tags over all models (by mean share)."""
    kept = pos.filter(pl.col("kept"))
    counts = kept.group_by("model", "pos").agg(pl.len().alias("tokens"))
    shares = counts.with_columns(share=pl.col("tokens") / pl.col("tokens").sum().over("model"))
    order = shares.group_by("pos").agg(pl.col("share").mean()).sort(["share", "pos"], descending=[True, False])
    keep = order["pos"].head(top).to_list()
    return shares.filter(pl.col("pos").is_in(keep)).sort("model", "pos"), keep


@figure("fig12")
def fig12(pos: pl.DataFrame, spec: dict) -> alt.Chart:
    top = spec.get("top", 8)
    shares, order = pos_shares(pos, top)
    return (
        alt.Chart(shares)
        .mark_bar()
        .encode(
            x=alt.X("pos:N", sort=order, title="part of speech"),
            xOffset=alt.XOffset("model:N"),
            y=alt.Y("share:Q", title="share of tagged English tokens", axis=alt.Axis(format="%")),
            color=alt.Color("model:N", title="model"),
            tooltip=["model:N", "pos:N", "tokens:Q", alt.Tooltip("share:Q", format=".1%")],
        )
        .properties(width=60 * len(order), height=280, title=f"POS of English vocabulary tokens ({top} most common tags): bars = share of each model's tagged tokens")
    )


@figure("fig13")
def fig13(df: pl.DataFrame, spec: dict) -> alt.Chart:
    best = _best(df, None, "fig13")
    if "pos" not in best.columns:
        raise DistreachError("fig13: the experiment's targets have no pos column (use a pos target family)")
    unit = _unit(best)
    models = best["model"].unique().sort().to_list()
    panels, placed = [], set()
    # an instruct pair, a model and its instruction-tuned variant (``pairs``: base -> instruct), share a panel
    for base, instruct in spec.get("pairs", {}).items():
        panels.append((f"{base} vs {instruct}", [base, instruct]))
        placed |= {base, instruct}
    panels += [(m, [m]) for m in models if m not in placed]
    order = [t for t in ("NOUN", "PROPN", "VERB", "ADJ") if t in best["pos"].unique()]
    order += sorted(set(best["pos"].unique()) - set(order))
    charts = []
    for title, members in panels:
        sub = best.filter(pl.col("model").is_in(members)).select("model", "pos", "kl_min", "target_id")
        if sub.is_empty():
            raise DistreachError(f"fig13: no results for {', '.join(members)}")
        charts.append(
            alt.Chart(sub)
            .mark_boxplot(extent=1.5, size=14)
            .encode(
                x=alt.X("pos:N", sort=order, title="part of speech"),
                xOffset=alt.XOffset("model:N", sort=members),
                y=alt.Y("kl_min:Q", title=f"min KL(p‖q) over inits ({unit})", scale=alt.Scale(domainMin=0)),
                color=alt.Color("model:N", title="model", sort=members, legend=alt.Legend() if len(members) > 1 else None),
            )
            .properties(width=70 * len(order), height=280,
                        title=f"{title}: boxes = quartiles over targets (min over inits), whiskers = 1.5 IQR")
        )
    return alt.hconcat(*charts).resolve_scale(color="independent", y="shared")


def quoted(text: str) -> str:
    """A token's text in quotes, spaces and control characters visible."""
    return json.dumps(text, ensure_ascii=False)


def rank_curve(logp: np.ndarray, head: int = 100, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(rank, probability) of a distribution's tokens sorted by probability, for a plot with a
    logarithmic rank axis: every rank up to ``head``, then about ``points`` ranks spaced evenly
    in log rank, and the last token with probability > 0."""
    p = np.sort(np.exp(logp.astype(np.float64)))[::-1]
    n = int((p > 0).sum())
    if n == 0:
        raise DistreachError("a distribution with no token of probability > 0")
    ranks = np.arange(1, min(head, n) + 1)
    if n > head:
        tail = np.unique(np.round(np.geomspace(head + 1, n, points)).astype(int))
        ranks = np.concatenate([ranks, tail])
    return ranks, p[ranks - 1]




@figure("fig03")
def fig03(df: pl.DataFrame, spec: dict) -> alt.Chart:
    top = spec.get("top", 10)
    order = df["label"].to_list()
    unit = _unit(df)
    curves, bars = [], []
    for r in df.iter_rows(named=True):
        logp = np.asarray(r["logprobs"], dtype=np.float32)
        ranks, probs = rank_curve(logp)
        curves.append(pl.DataFrame({"label": r["label"], "rank": ranks, "p": probs}))
        ids = r["top_ids"][:top]
        bars.append(pl.DataFrame({
            "label": r["label"], "name": r["name"], "rank": list(range(1, len(ids) + 1)),
            "token": [f"{i + 1}. {quoted(t)}" for i, t in enumerate(r["top_tokens"][:top])],
            "p": np.exp(logp[ids].astype(np.float64)),
        }))
    color = alt.Color("label:N", sort=order, title=None, legend=alt.Legend(orient="bottom", direction="vertical"))
    curve = alt.Chart(pl.concat(curves)).mark_line().encode(
        x=alt.X("rank:Q", scale=alt.Scale(type="log"), title="rank of the token (1 = most probable)"),
        y=alt.Y("p:Q", scale=alt.Scale(type="log"), title="probability"),
        color=color, tooltip=["label:N", "rank:Q", alt.Tooltip("p:Q", format=".3g")],
    ).properties(width=560, height=300, title=f"(a) every token's probability by rank; entropies in {unit}")
    names = df["name"].to_list()
    tokens = alt.Chart(pl.concat(bars)).mark_bar().encode(
        x=alt.X("token:N", sort=None, title=None, axis=alt.Axis(labelAngle=-45)),
        y=alt.Y("p:Q", title="probability"),
        color=alt.Color("label:N", sort=order, legend=None),
        tooltip=["name:N", "token:N", alt.Tooltip("p:Q", format=".3g")],
    ).properties(width=24 * top, height=180).facet(
        column=alt.Column("name:N", sort=names, title=f"(b) the {top} most probable tokens of each distribution"),
    ).resolve_scale(x="independent", y="independent")
    return alt.vconcat(curve, tokens)


def achieved_rows(df: pl.DataFrame, per_model: int = 4) -> pl.DataFrame:
    """A few rows of a collected table to show target against achieved: for each model, the
    best init (lowest ``kl_min``) of the first target (by id) of ``per_model`` entropy levels
    spread evenly over its grid, lowest and highest included."""
    best = _best(df, None, "target vs achieved", "soft")
    out = []
    for model in best["model"].unique().sort().to_list():
        sub = best.filter(pl.col("model") == model).sort("target_entropy", "target_id")
        first = sub.group_by("target_entropy", maintain_order=True).first()
        pick = np.unique(np.round(np.linspace(0, first.height - 1, min(per_model, first.height))).astype(int))
        out.append(first[pick.tolist()])
    return pl.concat(out, how="diagonal_relaxed")


def target_vs_achieved(rows: pl.DataFrame) -> alt.Chart:
    """Target against achieved for result rows with token texts
    (:func:`distreach.vocab.with_token_texts`): one panel per row, the target's most probable
    tokens by rank with their probability under p and under q at the best step, and q's own
    most probable tokens (log probability axis)."""
    unit = _unit(rows)
    points, order = [], []
    for r in rows.iter_rows(named=True):
        panel = (f"{r['model']}: target {r['target_id']}, H(p) = {r['target_entropy_achieved']:.2f}, "
                 f"H(q) = {r['q_entropy']:.2f}, KL = {r['kl_min']:.2f} {unit}")
        order.append(panel)
        for series, ids_col, tok_col, prob_col in (("target p", "p_top_ids", "p_top_tokens", "p_top_probs"),
                                                   ("q on those tokens", "p_top_ids", "p_top_tokens", "q_on_p_top"),
                                                   ("q's own top tokens", "q_top_ids", "q_top_tokens", "q_top_probs")):
            for rank, (tok, prob) in enumerate(zip(r[tok_col], r[prob_col]), 1):
                points.append({"panel": panel, "series": series, "rank": rank, "token": quoted(tok), "p": float(prob)})
    data = pl.DataFrame(points)
    series = ["target p", "q on those tokens", "q's own top tokens"]
    base = alt.Chart(data).encode(
        x=alt.X("rank:Q", title="rank among the target's (or q's own) most probable tokens", scale=alt.Scale(domainMin=1)),
        y=alt.Y("p:Q", scale=alt.Scale(type="log"), title="probability"),
        color=alt.Color("series:N", sort=series, title=None, legend=alt.Legend(orient="bottom")),
        shape=alt.Shape("series:N", sort=series, legend=None),
        tooltip=["series:N", "rank:Q", "token:N", alt.Tooltip("p:Q", format=".3g")],
    )
    return (base.mark_line(opacity=0.5) + base.mark_point(size=40, filled=True)).properties(width=300, height=200).facet(
        facet=alt.Facet("panel:N", sort=order, title=None, header=alt.Header(labelFontSize=11)), columns=2
    ).resolve_scale(y="independent")


SAVE_OPTIONS = {
    ".html": {"inline": True},  # Vega, Vega-Lite and vega-embed inside the page (from vl-convert): opens offline
    ".png": {"scale_factor": 2},
    ".svg": {},
}


def read_inputs(inputs: dict) -> pl.DataFrame:
    """What a figure draws from its input files (``distreach.figureregistry.figure_reads``; the figure rule names the files)."""
    if "pos" in inputs:
        return read_tables(inputs["pos"], with_model=True)
    return read_tables(inputs["nexttoken"] if "nexttoken" in inputs else inputs["tables"])


def draw(fig: str, inputs: dict, spec: dict, stem: str | Path, bundle: str | None = None) -> list[Path]:
    """Figure ``fig`` drawn from ``inputs`` (``{"tables": [...]}``, ``{"pos": [...]}`` or ``{"nexttoken": [...]}``) with
    its config entry ``spec``, written as ``stem``.html/.png/.svg (``bundle``: as :func:`save` takes it)."""
    return save(DRAW[fig](read_inputs(inputs), spec), stem, bundle)


def readable(chart):
    """``chart`` with no legend, axis or header label cut short: Vega-Lite truncates them with an
    ellipsis past ``labelLimit`` (legends 160 px, axes 180 px); 0 is no limit."""
    return (chart.configure_legend(labelLimit=0, titleLimit=0)
            .configure_axis(labelLimit=0, titleLimit=0)
            .configure_header(labelLimit=0, titleLimit=0))


def save(chart, stem: str | Path, bundle: str | None = None) -> list[Path]:
    """Write ``stem``.html/.png/.svg (:func:`readable`), each atomically; the HTML needs no network.
    ``bundle`` is :func:`distreach.offline.vega_bundle`'s text where the caller has it: the same
    page, without making the bundle again."""
    stem = Path(stem)
    chart = readable(chart)
    written = []
    for ext in FORMATS:
        path = stem.with_suffix(ext)
        options = {"template": InlineTemplate(bundle)} if ext == ".html" and bundle is not None else SAVE_OPTIONS[ext]
        with atomic_path(path) as tmp:
            chart.save(str(tmp), format=ext[1:], **options)
        written.append(path)
    return written

