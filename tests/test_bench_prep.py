"""benchmarks/prep_stage.py: the README's preparation-stage table is the one its results file gives."""

import json
from pathlib import Path
from .conftest import load_script

REPO = Path(__file__).resolve().parents[1]
prep_stage = load_script(REPO / "benchmarks" / "prep_stage.py")


def test_readme_table_is_the_results_file():
    report = json.loads((REPO / "benchmarks" / "results" / "cpu" / "prep-stage.json").read_text())
    readme = (REPO / "benchmarks" / "README.md").read_text()
    rows = prep_stage.table_rows(report)
    assert len(rows) == len(report["runs"]) >= 2
    for row in rows:
        assert row in readme.splitlines()
    first, last = report["runs"][0], report["runs"][-1]
    text = " ".join(readme.split())
    assert (f"{first['job_seconds_total'] / last['job_seconds_total']:.2f}x less job time and "
            f"{first['cpu_seconds'] / last['cpu_seconds']:.2f}x less CPU time") in text
