"""benchmarks/prep_stage.py: the README's preparation-stage table is the one its results file gives."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("prep_stage", REPO / "benchmarks" / "prep_stage.py")
prep_stage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prep_stage)


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
