"""benchmarks/prep_stage.py: the README's preparation-stage table is the one its results file gives."""

import json
import re

import pytest
from pathlib import Path
from .conftest import load_script

REPO = Path(__file__).resolve().parents[1]
prep_stage = load_script(REPO / "benchmarks" / "prep_stage.py")


def test_readme_table_is_the_results_file():
    report = json.loads((REPO / "benchmarks" / "results" / "cpu" / "prep-stage.json").read_text())
    readme = (REPO / "benchmarks" / "README.md").read_text()
    rows = prep_stage.table_rows(report)
    assert len(report["runs"]) >= 2
    section = readme.split("## Preparation stage")[1].split("\n## ")[0]
    assert "\n".join(rows) in section  # every run, in the order measured
    # the command shown is the one that made it
    assert re.search(r"prep_stage\.py --revs ([^\\\n]+)", section).group(1).split() == [r["rev"] for r in report["runs"]]
    jobs, cpu = prep_stage.ratios(report)
    text = " ".join(section.split())
    assert " ".join(prep_stage.summary(report).split()) in text
    low, high = prep_stage.job_ratio_range(report)
    assert f"{jobs:.2f}x less" in text and f"{low:.2f}x to {high:.2f}x" in text and f"{cpu:.2f}x less CPU time" in text


def test_readme_states_the_saving_of_the_last_change_from_its_results_file():
    report = json.loads((REPO / "benchmarks" / "results" / "cpu" / "prep-stage-change.json").read_text())
    section = (REPO / "benchmarks" / "README.md").read_text().split("## Preparation stage")[1].split("\n## ")[0]
    assert "\n".join(prep_stage.table_rows(report)) in section
    assert " ".join(prep_stage.saving(report).split()) in " ".join(section.split())
    command = re.search(r"--revs ([\w ]+?) *\\\n *--out benchmarks/results/cpu/prep-stage-change\.json", section)
    assert command.group(1).split() == [r["rev"] for r in report["runs"]]


def test_ratios_compare_the_mean_runs_of_the_first_and_last_revision():
    run = lambda commit, jobs, cpu, rev=None: {"rev": rev or commit, "commit": commit, "job_seconds_total": jobs,
                                               "cpu_seconds": cpu}
    report = {"runs": [run("old", 600, 500), run("new", 300, 300, "HEAD"), run("new", 340, 320), run("old", 400, 380)]}
    assert prep_stage.ratios(report) == (500 / 320, 440 / 310)  # HEAD and its sha: one revision
    assert prep_stage.summary(report).startswith("Mean job time 320.0 s against 500.00 s: 1.56x less (64.0% of the old;")
    assert prep_stage.summary(report).endswith(". The mean job time is 70.0 s more than half of the old.")
    assert prep_stage.saving(report) == ("Mean job time 320.0 s against 500.0 s: 36.0% less (any run of one against "
                                         "any of the other: 1.18x to 2.00x); mean CPU time 310.0 s against 440.0 s: "
                                         "29.5% less.")
    slower = {"runs": [run("old", 100, 100), run("new", 110, 120)]}
    assert prep_stage.saving(slower).endswith(": 10.0% more (any run of one against any of the other: 0.91x to 0.91x); "
                                              "mean CPU time 120.0 s against 100.0 s: 20.0% more.")
    half = {"runs": [run("old", 600, 500), run("new", 300, 250), run("new", 290, 250), run("old", 600, 500)]}
    assert prep_stage.summary(half).endswith(". The mean job time is at most half of the old.")
    report["runs"].insert(2, run("mid", 100, 100))
    assert prep_stage.ratios(report) == (500 / 100, 440 / 100)  # the first revision against the last distinct one
    assert prep_stage.job_ratio_range(report) == (400 / 100, 600 / 100)
    report["runs"].pop(2)
    assert prep_stage.job_ratio_range(report) == (400 / 340, 600 / 300)
    for f in (prep_stage.ratios, prep_stage.job_ratio_range):
        with pytest.raises(ValueError, match="two revisions"):
            f({"runs": [run("old", 600, 500), run("old", 400, 380)]})
