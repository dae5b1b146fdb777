"""benchmarks/gpu_check.py (the one-command GPU check) and gpu_fig1's options, on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from distreach.io import read_arrow, arrow_metadata

from .conftest import load_script
from .test_workflow import REPO, planned_jobs, snakemake

gpu_check = load_script(REPO / "benchmarks" / "gpu_check.py")


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_stand_ins_dag_without_pos_plans_the_tables_and_claims_and_no_pos_tagging(tmp_path):
    stand_ins = yaml.safe_load((REPO / "configs" / "paper-stand-ins.yaml").read_text())
    config, dropped = gpu_check.without_pos(stand_ins)
    assert dropped == ["fig12", "fig13", "pos", "pos-uniform"]
    assert set(config["experiments"]) == set(stand_ins["experiments"]) - {"pos"}
    assert set(config["figures"]) == set(stand_ins["figures"]) - {"fig12", "fig13"}
    assert config["targets"]["from-llama3-8b"] == stand_ins["targets"]["from-llama3-8b"]  # derived from lm: kept
    targets = gpu_check.dag_targets(config, figures=False)
    jobs = planned_jobs(snakemake(tmp_path / "nopos", config, "--config", "device=cuda", "-n", *targets))
    assert "pos_tag" not in jobs and jobs["claims"] == 1 and jobs["collect"] == len(config["experiments"]) == 20
    assert "figure" not in jobs
    # the same targets from the whole config need spaCy's POS tables (the shared tuning jobs read them)
    jobs = planned_jobs(snakemake(tmp_path / "all", stand_ins, "-n", *gpu_check.dag_targets(stand_ins, figures=False)))
    assert jobs["pos_tag"] > 0


def test_job_seconds_counts_a_job_with_several_outputs_once(tmp_path):
    meta = tmp_path / ".snakemake" / "metadata"
    meta.mkdir(parents=True)
    records = [
        {"rule": "claims", "job_hash": 7, "starttime": 100.0, "endtime": 103.5},  # claims.md
        {"rule": "claims", "job_hash": 7, "starttime": 100.1, "endtime": 103.5},  # claims.html
        {"rule": "tune_job", "job_hash": 8, "starttime": 10.0, "endtime": 30.0},
        {"rule": "tune_job", "job_hash": 9, "starttime": 12.0, "endtime": 17.0},
    ]
    for i, rec in enumerate(records):
        (meta / f"r{i}").write_text(json.dumps(rec))
    (meta / "broken").write_text("{")  # a record being written: skipped
    assert gpu_check.job_seconds(tmp_path) == {
        "claims": {"jobs": 1, "seconds": 3.5},
        "tune_job": {"jobs": 2, "seconds": 25.0},
    }


def test_a_part_over_its_budget_is_stopped_with_its_children_and_recorded(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        f"open({str(pidfile)!r}, 'w').write(str(c.pid)); print('started', flush=True); time.sleep(300)"
    )
    start = time.monotonic()
    part = gpu_check.run_part("slow", [sys.executable, "-c", code], 3, tmp_path / "slow.log", dict(os.environ), tmp_path)
    assert time.monotonic() - start < 60
    assert part["status"] == "timeout" and part["exit_code"] != 0 and part["budget_seconds"] == 3
    assert part["log_tail"] == ["started"]
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)

    part = gpu_check.run_part("quick", [sys.executable, "-c", "raise SystemExit(3)"], 30, tmp_path / "q.log",
                              dict(os.environ), tmp_path)
    assert part["status"] == "failed" and part["exit_code"] == 3


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_gpu_fig1_grid_options_and_no_figure(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_fig1.py"), "--shape", "tiny", "--step", "2", "--inits", "2",
         "--max-steps", "20", "--no-figure", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_fig1.json").read_text())
    # levels 0, 2, ..., 10 bits and the maximum, log2(2000) = 10.97
    assert report["levels"] == 7 and report["rows"] == 14 and report["grid_step_bits"] == 2.0
    assert report["shape"] == "tiny" and "7 levels every 2 bits" in proc.stdout
    table = read_arrow(tmp_path / "gpu_fig1.arrow")
    assert pl.from_arrow(table)["steps"].max() <= 20
    assert arrow_metadata(table)["row_steps"] == report["row_steps"]
    assert not list(tmp_path.glob("gpu_fig1.png"))

    bad = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_fig1.py"), "--tiny", "--step", "0",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2 and "--step must be > 0" in bad.stderr.splitlines()[-1]
    assert not (tmp_path / "bad").exists()


def test_benchmarks_readme_gpu_table_is_what_the_runs_wrote():
    """The GPU table of benchmarks/README.md states the numbers of the JSON files the runs wrote."""
    runs = REPO / "benchmarks" / "results" / "h200"
    checks = {i: json.loads((runs / f"gpu_check-{i}.json").read_text()) for i in (1, 2, 3)}
    paper = [json.loads((runs / "gpu_fig1-paper-grid.json").read_text()), checks[3]["parts"]["fig1-llama3.2-1b"]["report"]]
    coarse = [checks[i]["parts"]["fig1-llama3.2-1b"]["report"] for i in (1, 2)]
    big = [checks[i]["parts"]["fig1-llama3-8b"]["report"] for i in (1, 3)]
    readme = (REPO / "benchmarks" / "README.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in readme.splitlines() if line.startswith("| Llama")}

    def cells(reps, bold=False):
        def both(key, fmt):
            return " / ".join(dict.fromkeys(fmt(r[key]) for r in reps))  # one value when the runs agree

        minutes = both("gpu_minutes", str)
        return [f"{reps[0]['levels']} x {reps[0]['inits']}", both("rows", "{:,}".format), both("row_steps", "{:,}".format),
                f"**{minutes}**" if bold else minutes, both("prompt_steps_per_second", "{:,.0f}".format),
                both("achieved_tflops", "{:,.1f}".format), both("peak_memory_gib", "{:,.1f}".format)]

    assert rows["Llama-3.2-1B shape, paper grid (every 0.05 bits; two runs)"] == cells(paper, bold=True)
    assert rows["Llama-3.2-1B shape, every 0.2 bits (two runs)"] == cells(coarse)
    assert rows["Llama-3-8B shape, every 1 bit (two runs)"] == cells(big)
    assert all(r["levels"] == 341 and r["grid_step_bits"] == 0.05 for r in paper)
    parts = checks[2]["parts"]
    dag = parts.get("standins-dag") or parts["twins-dag"]  # the part's name in the runs before its rename
    assert dag["status"] == "ok" and f"in {round(dag['wall_seconds'])} s" in readme
    walls = [round(checks[3]["parts"][p]["wall_seconds"]) for p in ("fig1-llama3.2-1b", "fig1-llama3-8b")]
    assert f"1B paper grid {walls[0]} s" in readme and f"8B {walls[1]} s" in readme
    # the bullets under the table: the two paper-grid runs' ratio, the coarse grid's rates against the
    # full grid's, and the coarse grid's time scaled to the paper's grid
    text = " ".join(readme.split())
    minutes = sorted(r["gpu_minutes"] for r in paper)
    assert f"took times {minutes[1] / minutes[0]:.1f}x apart" in text
    span = lambda values, fmt="{:.0f}": "-".join(fmt.format(v) for v in (min(values), max(values)))  # noqa: E731
    assert (f"ran at {span([r['achieved_tflops'] for r in coarse])} TFLOP/s against "
            f"{span([r['achieved_tflops'] for r in paper])} on the full grid") in text
    assert f"overestimates: {span([r['paper_grid_gpu_minutes'] for r in coarse], '{:.1f}')} GPU-minutes" in text
