"""HTML figures and the claims page open with no network: in a real headless browser (Debian's
chromium) with every request sent to a dead proxy, the chart is drawn (Vega marks in the DOM).

Skipped without a chromium on PATH, unless DISTREACH_REQUIRE_BROWSER=1 (as in CI, where
.ci/run installs it), where it fails instead."""

from __future__ import annotations

import os
import shutil
import subprocess

import polars as pl
import pytest

from distreach import claims, figures

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None and os.environ.get("DISTREACH_REQUIRE_BROWSER") != "1",
    reason="no chromium on PATH (apt-get install chromium)",
)


def dom_offline(page, profile) -> str:
    """The page's DOM after its scripts ran, with no network: a fresh profile and every request
    to a proxy on a closed port."""
    assert BROWSER is not None, "DISTREACH_REQUIRE_BROWSER=1 but no chromium on PATH"
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=10000",
           "--dump-dom", page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def vanilla(model):
    return [dict(experiment="e", model=model, method="soft", prefix_len=5, n_soft=5, target_kind="vanilla",
                 target_id=f"v{h}-{r}", target_entropy=float(h), entropy_unit="bits", kl_min=h * (8 - h) / 4 + 0.1 * r,
                 q_entropy=float(h), target_entropy_achieved=float(h), status="ok", init_index=0)
            for h in range(0, 9, 2) for r in range(3)]


def test_figure_and_claims_pages_render_offline(tmp_path):
    df = pl.DataFrame(vanilla("a") + vanilla("b"))
    figures.save(figures.fig01(df, {"experiment": "e"}), tmp_path / "fig01")
    dom = dom_offline(tmp_path / "fig01.html", tmp_path / "profile-fig")
    assert 'class="mark-line role-mark' in dom and 'class="mark-area role-mark' in dom  # the lines and bands are drawn
    assert "Soft prompts: minimum KL vs target entropy" in dom  # the title too

    claims.write_report(claims.check(df, {"fig01": {"experiment": "e"}}), tmp_path / "claims.md", tmp_path / "claims.html")
    dom = dom_offline(tmp_path / "claims.html", tmp_path / "profile-claims")
    assert "<td>C1</td>" in dom and "How the verdicts are reached" in dom
