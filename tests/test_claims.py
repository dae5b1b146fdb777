"""Claims verdicts come from the data by their stated rules."""

from __future__ import annotations

import polars as pl

from distreach import claims


def rows(model, kind, method, n_soft, curve, experiment="e", unit="bits"):
    out = []
    for h, kl in curve:
        for init, extra in ((0, 0.0), (1, 0.5)):  # the min over inits is the first
            out.append(
                dict(experiment=experiment, model=model, method=method, prefix_len=5, n_soft=n_soft, target_kind=kind,
                     target_id=f"{kind}-{h}", target_entropy=float(h), entropy_unit=unit, kl_min=kl + extra, status="ok",
                     init_index=init)
            )
    return out


def test_unimodal_curve_holds_and_monotone_does_not():
    df = pl.DataFrame(rows("m", "vanilla", "soft", 5, [(0, 0.001), (4, 3.0), (8, 5.0), (12, 1.0)])
                      + rows("mono", "vanilla", "soft", 5, [(0, 0.5), (4, 1.0), (8, 2.0), (12, 3.0)]))
    t = claims.check(df, {"fig01": {"experiment": "e"}})
    got = {(r["claim"], r["model"]): r["verdict"] for r in t.iter_rows(named=True)}
    assert got[("C1", "m")] == "holds" and got[("C2", "m")] == "holds"
    assert got[("C1", "mono")] == "does not hold" and got[("C2", "mono")] == "does not hold"
    assert got[("C3", "-")] == "not enough data"
    stat = t.filter((pl.col("claim") == "C1") & (pl.col("model") == "m"))["statistic"][0]
    assert "peak 5 bits at H = 8" in stat


def test_method_order_and_lm_order():
    data = (
        rows("m", "vanilla", "soft", 5, [(4, 1.0)], "meth") + rows("m", "vanilla", "hybrid-1", 1, [(4, 2.0)], "meth")
        + rows("m", "vanilla", "hard", 0, [(4, 1.5)], "meth")
        + rows("m", "lm", "soft", 5, [(3, 0.1)], "lm") + rows("m", "shuffled", "soft", 5, [(3, 0.5)], "sh")
        + rows("m", "matched", "soft", 5, [(3, 0.9)], "ma")
    )
    t = claims.check(pl.DataFrame(data), {"fig04": {"experiments": ["meth"], "model": "m"},
                                          "fig09": {"experiments": ["lm", "sh", "ma"], "model": "m"}})
    got = {r["claim"]: r for r in t.iter_rows(named=True)}
    assert got["C3"]["verdict"] == "does not hold" and got["C3"]["statistic"].startswith("soft 1 <= hybrid-1 2 <= hard 1.5")
    assert got["C5"]["verdict"] == "holds" and "lm 0.1 < shuffled 0.5 < matched 0.9" in got["C5"]["statistic"]


def test_report_is_written(tmp_path):
    t = claims.check(pl.DataFrame(rows("m", "vanilla", "soft", 5, [(0, 0.001), (4, 3.0), (8, 1.0)])), {"fig01": {"experiment": "e"}})
    claims.write_report(t, tmp_path / "c.md", tmp_path / "c.html")
    md = (tmp_path / "c.md").read_text()
    assert "| C1 |" in md and "**holds**" in md and "Rules" in md
    assert "<table>" in (tmp_path / "c.html").read_text()
