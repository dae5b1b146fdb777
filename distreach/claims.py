"""The paper's findings re-tested on a run's collected tables, each with its statistic and a
verdict from a stated rule: ``holds``, ``does not hold`` or ``not enough data``.

Every statistic is on the minimum KL over inits of each target (rows with status ``ok``),
averaged over the targets of a group. The data of each claim is the data of the figure that
shows it (the config's ``figures`` section), so a claim is tested on exactly what is drawn.

- C1 (Fig. 1) soft min KL vs target entropy rises then falls: the entropy level with the highest
  mean is neither the lowest nor the highest level, and the means at both ends are lower.
- C2 (Fig. 1) near-zero min KL at the lowest entropies: mean at the lowest level < 0.01 nats.
- C3 (Fig. 4) soft <= hybrid <= hard: mean min KL does not decrease as soft positions are
  replaced by hard ones (methods ordered by their number of soft positions).
- C4 (Fig. 7) outlier targets easier than vanilla at moderate entropy: outlier mean below the
  vanilla mean at more than half of the shared entropy levels.
- C5 (Figs. 8, 9) LM-generated easier than matched vanilla, shuffled in between: means ordered
  lm < shuffled < matched (soft, Fig. 9) and lm < matched (hard, Fig. 8).
- C6 (Fig. 10) migrated easier than matched vanilla: migrated mean below matched mean.
- C7 (Fig. 6) random-init twins also unimodal: the C1 rule on each twin.
"""

from __future__ import annotations

import html
import math

import polars as pl

from .figreg import figure_experiments
from .tables import min_over_inits

HOLDS, FAILS, NO_DATA = "holds", "does not hold", "not enough data"
NEAR_ZERO_NATS = 0.01
CLAIMS = {
    "C1": "soft min KL vs target entropy rises then falls (unimodal)",
    "C2": "near-zero min KL at the lowest entropies",
    "C3": "soft <= hybrid <= hard",
    "C4": "outlier targets easier than vanilla at moderate entropy",
    "C5": "LM-generated easier than matched vanilla, shuffled in between",
    "C6": "migrated targets easier than matched vanilla",
    "C7": "random-init twins also unimodal",
}


def _nats(value: float, unit: str) -> float:
    return value * math.log(2) if unit == "bits" else value


def _curve(best: pl.DataFrame) -> pl.DataFrame:
    return best.group_by("target_entropy").agg(pl.col("kl_min").mean().alias("mean"), pl.len().alias("n")).sort("target_entropy")


def unimodal(best: pl.DataFrame, unit: str) -> tuple[str, str]:
    curve = _curve(best)
    if curve.height < 3:
        return NO_DATA, f"{curve.height} entropy levels (need 3)"
    means, levels = curve["mean"].to_list(), curve["target_entropy"].to_list()
    peak = max(range(len(means)), key=means.__getitem__)
    stat = (
        f"peak {means[peak]:.3g} {unit} at H = {levels[peak]:.3g}; ends {means[0]:.3g} (H = {levels[0]:.3g}) "
        f"and {means[-1]:.3g} (H = {levels[-1]:.3g})"
    )
    inside = 0 < peak < len(means) - 1 and means[0] < means[peak] and means[-1] < means[peak]
    return (HOLDS if inside else FAILS), stat


def near_zero(best: pl.DataFrame, unit: str) -> tuple[str, str]:
    curve = _curve(best)
    if curve.is_empty():
        return NO_DATA, "no vanilla soft-prompt rows"
    low = curve.row(0, named=True)
    nats = _nats(low["mean"], unit)
    stat = f"mean {low['mean']:.3g} {unit} ({nats:.3g} nats) at H = {low['target_entropy']:.3g}, {low['n']} targets"
    return (HOLDS if nats < NEAR_ZERO_NATS else FAILS), stat


def ordered(means: list[tuple[str, float]], strict: bool) -> bool:
    vals = [m for _, m in means]
    return all(a < b if strict else a <= b for a, b in zip(vals, vals[1:]))


def _means(best: pl.DataFrame, by: str) -> dict[str, float]:
    return dict(best.group_by(by).agg(pl.col("kl_min").mean()).iter_rows())


def method_order(sub: pl.DataFrame, unit: str) -> tuple[str, str]:
    """C3: mean min KL by method, methods ordered from most to fewest soft positions."""
    soft_n = dict(sub.group_by("method").agg(pl.col("n_soft").first()).iter_rows())
    means = _means(sub, "method")
    seq = [(m, means[m]) for m in sorted(means, key=lambda m: -soft_n[m])]
    stat = " <= ".join(f"{m} {v:.3g}" for m, v in seq) + f" ({unit}, mean over targets)"
    return (NO_DATA if len(seq) < 2 else HOLDS if ordered(seq, False) else FAILS), stat


def outliers_easier(sub: pl.DataFrame, unit: str) -> tuple[str, str]:
    """C4: outlier against vanilla means, level by level."""
    per = sub.group_by("target_entropy", "target_kind").agg(pl.col("kl_min").mean()).pivot(
        "target_kind", index="target_entropy", values="kl_min"
    )
    if not {"outlier", "vanilla"} <= set(per.columns):
        return NO_DATA, "needs outlier and vanilla targets"
    per = per.drop_nulls(["outlier", "vanilla"]).sort("target_entropy")
    wins = int((per["outlier"] < per["vanilla"]).sum())
    stat = f"outlier lower at {wins} of {per.height} levels; means {per['outlier'].mean():.3g} vs {per['vanilla'].mean():.3g} {unit}"
    return (NO_DATA if per.height == 0 else HOLDS if wins > per.height / 2 else FAILS), stat


def lm_easier(sub: pl.DataFrame, unit: str) -> tuple[str, str]:
    """C5: lm < shuffled < matched with soft prompts, lm < matched with hard ones (where present)."""
    parts, ok, enough = [], True, False
    for method, kinds in (("soft", ("lm", "shuffled", "matched")), ("hard", ("lm", "matched"))):
        means = _means(sub.filter(pl.col("method") == method), "target_kind")
        seq = [(k, means[k]) for k in kinds if k in means]
        if len(seq) == len(kinds):
            enough = True
            ok &= ordered(seq, True)
            parts.append(f"{method}: " + " < ".join(f"{k} {v:.3g}" for k, v in seq))
    return ((HOLDS if ok else FAILS) if enough else NO_DATA), "; ".join(parts) or "missing target kinds"


def migrated_easier(sub: pl.DataFrame, unit: str) -> tuple[str, str]:
    """C6: migrated against matched vanilla means."""
    means = _means(sub, "target_kind")
    if not {"migrated", "matched"} <= set(means):
        return NO_DATA, "needs migrated and matched targets"
    stat = f"migrated {means['migrated']:.3g} < matched {means['matched']:.3g} {unit}"
    return (HOLDS if means["migrated"] < means["matched"] else FAILS), stat


def _soft_vanilla(best: pl.DataFrame) -> pl.DataFrame:
    return best.filter((pl.col("method") == "soft") & (pl.col("target_kind") == "vanilla"))


def check(df: pl.DataFrame, figures: dict, twins: dict | None = None) -> pl.DataFrame:
    """One row per (claim, model): claim, finding, model, figure, statistic, verdict."""
    unit = df["entropy_unit"][0] if df.height else "nats"
    twin_models = sorted(set((twins or {}).values()))

    def table(figs):
        exps = [e for f in figs if figures.get(f) for e in figure_experiments(figures[f])]
        sub = df.filter(pl.col("experiment").is_in(exps))
        return min_over_inits(sub) if not sub.is_empty() else None

    # (claim, figures whose data it uses, rows it looks at, rule, models: None = every model there)
    plan = [
        ("C1", ["fig01"], _soft_vanilla, unimodal, None),
        ("C2", ["fig01"], _soft_vanilla, near_zero, None),
        ("C3", ["fig04"], None, method_order, None),
        ("C4", ["fig07"], None, outliers_easier, None),
        ("C5", ["fig08", "fig09"], None, lm_easier, None),
        ("C6", ["fig10"], None, migrated_easier, None),
        ("C7", ["fig06"], _soft_vanilla, unimodal, twin_models),
    ]
    rows = []
    for claim, figs, select, rule, models in plan:
        best = table(figs)
        where = ", ".join(figs)
        if best is not None and select is not None:
            best = select(best)
        if best is None or models == []:
            found = [("-", (NO_DATA, f"{' and '.join(figs)} {'is' if len(figs) == 1 else 'are'} not configured"))]
        else:
            names = models if models is not None else sorted(best["model"].unique())
            found = [(m, rule(best.filter(pl.col("model") == m), unit)) for m in names]
        for model, (verdict, stat) in found:
            rows.append({"claim": claim, "finding": CLAIMS[claim], "model": model, "figure": where, "statistic": stat, "verdict": verdict})
    return pl.DataFrame(rows)


def to_markdown(claims: pl.DataFrame) -> str:
    lines = [
        "| claim | finding | model | statistic | verdict |",
        "|---|---|---|---|---|",
    ]
    for r in claims.iter_rows(named=True):
        lines.append(f"| {r['claim']} | {r['finding']} | {r['model']} | {r['statistic']} | **{r['verdict']}** |")
    return "\n".join(lines) + "\n"


def write_report(claims: pl.DataFrame, md_path, html_path) -> None:
    """The claims table as Markdown and as a standalone HTML page, each written atomically."""
    from .io import atomic_path

    rules = (__doc__ or "").split("\n\n", 2)[2].strip()
    md = "# The paper's findings on this run\n\n" + to_markdown(claims) + "\nRules (distreach.claims):\n\n" + rules + "\n"
    with atomic_path(md_path) as tmp:
        tmp.write_text(md)
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in ("claim", "finding", "model", "statistic"))
        + f"<td class='{r['verdict'].replace(' ', '-')}'><b>{html.escape(r['verdict'])}</b></td></tr>\n"
        for r in claims.iter_rows(named=True)
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>distreach: the paper's findings on this run</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
.holds{{background:#e6f4ea}}.does-not-hold{{background:#fce8e6}}.not-enough-data{{background:#f1f3f4}}</style></head>
<body><h1>The paper's findings on this run</h1>
<table><tr><th>claim</th><th>finding</th><th>model</th><th>statistic</th><th>verdict</th></tr>
{cells}</table><h2>Rules</h2><pre>{html.escape(rules)}</pre></body></html>
"""
    with atomic_path(html_path) as tmp:
        tmp.write_text(page)
