"""Job time of the default run's preparation stage (models, vocabularies, POS tables, targets),
for one or more revisions of this repository, measured the same way one after the other.

    python benchmarks/prep_stage.py [--revs 15f61d2 HEAD HEAD 15f61d2] [--out benchmarks/results/cpu/prep-stage.json]

Each revision is exported (``git archive``) to a temporary folder and its Snakefile run there
from an empty ``results/`` with ``snakemake --cores 1`` on ``config.yaml``, for the
preparation outputs only (every model folder, vocabulary and POS table and target file the
default run makes). One job at a time, so a job's time is its own. Reported per revision: the
job seconds per rule (from Snakemake's log, as ``scripts/default_run_docs.py`` reads a run's
log), their sum, the wall time, and the CPU seconds of the Snakemake run (its jobs and its own
DAG building; user + system). The models come
from the embedded GGUF packages, as in the default run. Run it on a quiet machine: anything else
running inflates the job seconds (the CPU seconds much less). A revision named more than once is
measured each time (runs grouped by commit); the ratios compare the mean seconds of the first
revision named with those of the last distinct one, so an order such as A B B A cancels a steady
drift of the machine's speed over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREP_RULES = ("materialise_model", "vocab", "pos_tag", "targets")


def prep_outputs(checkout: Path) -> list[str]:
    """The preparation stage's files in the default run's DAG of ``checkout`` (a dry run)."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--summary"],
                         cwd=checkout, capture_output=True, text=True, check=True).stdout
    files = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) > 2 and parts[2] in PREP_RULES:
            files.append(parts[0])
    return sorted(set(files))


def measure(rev: str) -> dict:
    sys.path.insert(0, str(REPO / "scripts"))
    from default_run_docs import job_seconds

    with tempfile.TemporaryDirectory(prefix="prep-") as tmp:
        checkout = Path(tmp)
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive, check=True)
        sha = subprocess.run(["git", "rev-parse", "--short=7", f"{rev}^{{commit}}"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        files = prep_outputs(checkout)
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *files], cwd=checkout, env=env,
                             capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if run.returncode:
            sys.exit(f"{rev}: snakemake failed:\n{run.stderr[-3000:]}")
        jobs = job_seconds(run.stderr + run.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rev": rev, "commit": sha, "files": len(files), "job_seconds": {k: round(v) for k, v in sorted(jobs.items())},
            "job_seconds_total": round(sum(jobs.values())), "wall_seconds": round(wall), "cpu_seconds": round(cpu)}


def mean_seconds(report: dict, commit: str) -> tuple[float, float]:
    """Mean job seconds and mean CPU seconds of a commit's runs in a report."""
    runs = [r for r in report["runs"] if r["commit"] == commit]
    return (sum(r["job_seconds_total"] for r in runs) / len(runs), sum(r["cpu_seconds"] for r in runs) / len(runs))


def compared(report: dict) -> tuple[str, str]:
    """The commits a report compares: the first revision measured and the last one first measured."""
    commits = list(dict.fromkeys(r["commit"] for r in report["runs"]))
    if len(commits) < 2:
        raise ValueError(f"ratios need two revisions, the report has {len(commits)}")
    return commits[0], commits[-1]


def ratios(report: dict) -> tuple[float, float]:
    """Job-seconds and CPU-seconds ratios (of the means) of the two revisions compared."""
    first, last = (mean_seconds(report, c) for c in compared(report))
    return first[0] / last[0], first[1] / last[1]


def job_ratio_range(report: dict) -> tuple[float, float]:
    """The least and the largest job-seconds ratio of any run of the first revision to any run of
    the last one first measured (how far the machine's noise moves a single pair of runs)."""
    old, new = ([r["job_seconds_total"] for r in report["runs"] if r["commit"] == c] for c in compared(report))
    return min(old) / max(new), max(old) / min(new)


def summary(report: dict) -> str:
    """The README's sentence on a report: mean job seconds of the first and the last revision, their
    ratio, the range of single-pair ratios, the CPU-time ratio, and whether the mean job time is at
    most half of the old."""
    old, new = (mean_seconds(report, c)[0] for c in compared(report))
    jobs, cpu = ratios(report)
    low, high = job_ratio_range(report)
    half = "at most half of the old" if new <= old / 2 else f"{new - old / 2:.1f} s more than half of the old"
    return (f"Mean job time {new:.1f} s against {old:.2f} s: {jobs:.2f}x less ({100 / jobs:.1f}% of the old; any run "
            f"of one against any of the other: {low:.2f}x to {high:.2f}x), and {cpu:.2f}x less CPU time "
            f"({100 / cpu:.1f}%). The mean job time is {half}.")


def saving(report: dict) -> str:
    """The README's sentence on a report of one change (no bar to meet): mean job seconds of the
    first and the last revision, the share saved, and the range of single-pair ratios."""
    (old, old_cpu), (new, new_cpu) = (mean_seconds(report, c) for c in compared(report))
    low, high = job_ratio_range(report)

    def change(a, b):
        return f"{100 * abs(1 - b / a):.1f}% {'less' if b <= a else 'more'}"

    return (f"Mean job time {new:.1f} s against {old:.1f} s: {change(old, new)} (any run of one against any of the "
            f"other: {low:.2f}x to {high:.2f}x); mean CPU time {new_cpu:.1f} s against {old_cpu:.1f} s: "
            f"{change(old_cpu, new_cpu)}.")


def table_rows(report: dict) -> list[str]:
    """The README table's rows (markdown) of a report written by this script ("-": a rule with no job
    in that revision)."""
    rows = []
    for r in report["runs"]:
        jobs = r["job_seconds"]
        rows.append(f"| `{r['commit']}` | " + " | ".join(str(jobs.get(rule, "-")) for rule in PREP_RULES)
                    + f" | {r['job_seconds_total']} | {r['cpu_seconds']} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--revs", nargs="+", default=["HEAD"], help="git revisions to measure, in order")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    from distreach.models import machine

    results = []
    for rev in args.revs:
        print(f"{rev}: preparation stage from an empty results/ ...", flush=True)
        results.append(measure(rev))
        r = results[-1]
        print(f"  {r['commit']}: {r['files']} files, job seconds {r['job_seconds_total']} {r['job_seconds']}, "
              f"wall {r['wall_seconds']} s, CPU {r['cpu_seconds']} s", flush=True)
    report = {"machine": machine(), "runs": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if len({r["commit"] for r in results}) > 1:
        jobs, cpu = ratios(report)
        print(f"job_seconds_ratio={jobs:.2f} cpu_seconds_ratio={cpu:.2f} (mean of each revision's runs)")
        print(summary(report))
        print(saving(report))


if __name__ == "__main__":
    main()
