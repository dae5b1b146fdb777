"""Time a figure job's work with the run's JavaScript bundle against bundling it in the job.

    python benchmarks/figure_jobs.py [--run DIR] [--passes 2] [--out FILE.json]

Needs the tables a finished default run wrote in ``--run`` (the workflow's folder, this checkout by
default: ``results/collected/``, ``results/nexttoken/``, ``results/pos/`` after ``snakemake --cores
all``). Each figure of ``config.yaml`` is drawn in a fresh
Python process, as the workflow's ``figure`` job does (its script's imports, reading the tables,
drawing, writing html, png and svg), once with the bundle the ``vega_bundle`` rule writes
(:func:`distreach.offline.read_vega_bundle`) and once without it, where the page is bundled in the
job (altair's ``inline=True``, what every figure job did before that rule); the two alternate,
in turns of the order, over ``--passes`` passes. The process's wall seconds are timed from
outside; the Snakemake job's own start (its script preamble) is the same either way and not
included. Writing the bundle once (the ``vega_bundle`` job's work) is timed the same way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("bundle", "inline")
FIGURE_PACKAGES = ("altair", "vl-convert-python")  # what a figure job bundles and draws with, beside package_versions()
DRIVER = """
import json, sys
from distreach import figures
from distreach.offline import read_vega_bundle
fig, inputs, spec, stem, bundle = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
figures.draw(fig, inputs, spec, stem, read_vega_bundle(bundle) if bundle else None)
"""
WRITE = "import sys; from distreach.offline import write_vega_bundle; write_vega_bundle(sys.argv[1])"


def figure_specs(config_path: Path) -> dict:
    """The config's figures with the schema's defaults filled in, as the workflow sees them."""
    import yaml
    from snakemake.utils import validate

    from distreach.config import check_config

    config = yaml.safe_load(config_path.read_text())
    check_config(config, REPO / "schemas" / "config.schema.yaml", validate)
    return config["figures"]


def figure_inputs(fig: str, spec: dict, run: Path) -> tuple[str, list[str]]:
    """The files figure ``fig`` reads in the workflow folder ``run`` (the workflow's figure_inputs)."""
    from distreach import figureregistry
    from distreach.figurefiles import FIGURE_FILES

    kind, names = figureregistry.figure_reads(fig, spec)
    return kind, [str(run / FIGURE_FILES[kind].format(name)) for name in names]


def tables_commit(jobs) -> list[str]:
    """The distreach commits that made the tables the figures read (their Arrow provenance)."""
    from distreach.io import arrow_metadata, read_arrow

    made = set()
    for _, inputs, _ in jobs:
        for files in json.loads(inputs).values():
            for f in files:
                made.add(arrow_metadata(read_arrow(f)).get("packages", {}).get("distreach_commit", "unknown"))
    return sorted(made)


def timed(args: list[str], what: str) -> float:
    """Wall seconds of a fresh Python process running ``args``; one line naming ``what`` and the
    process's last line of output where it fails."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[-1]
        raise SystemExit(f"{what}: {last}")
    return time.perf_counter() - t


def mode_stats(rows: list[dict], passes: int) -> dict:
    """One way's seconds: a figure's (median over figures and passes) and all figures' (the
    mean over passes of each pass's sum)."""
    per_pass = [sum(r["seconds"] for r in rows if r["pass"] == p) for p in range(passes)]
    return {"median": statistics.median(r["seconds"] for r in rows), "total": statistics.mean(per_pass)}


def table(report: dict) -> str:
    """The README's table: per mode, the seconds of a figure's work (median over figures and
    passes) and of all the config's figures (mean over passes)."""
    lines = ["| figure job's JavaScript | s per figure (median) | s for all figures (mean of passes) |", "|---|---|---|"]
    for mode in MODES:
        s = report["modes"][mode]
        lines.append(f"| {report['labels'][mode]} | {s['median']:.2f} | {s['total']:.1f} |")
    return "\n".join(lines)


def summary(report: dict) -> str:
    """The README's sentence under the table: the saving, net of the bundle's own job."""
    b, i, m = report["modes"]["bundle"], report["modes"]["inline"], report["machine"]
    saved = i["total"] - b["total"] - report["write_seconds"]
    return (f"{report['figures']} figures, {report['passes']} passes: {1 - b['total'] / i['total']:.0%} less time with the "
            f"run's bundle, {i['total'] / b['total']:.2f}x as fast ({b['total']:.1f} s against {i['total']:.1f} s a pass); "
            f"writing the bundle once took "
            f"{report['write_seconds']:.1f} s, so a run saves {saved:.0f} s of job time on these figures. Measured on "
            f"{m['cpu']}, {m['cores']} cores, {'with' if m['native_bf16'] else 'without'} native bf16.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--run", default=str(REPO), help="the workflow folder of a finished default run")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if args.passes < 1:
        ap.error(f"--passes {args.passes}: at least 1")
    from importlib.metadata import version

    from distreach.io import atomic_path, package_versions
    from distreach.models import machine

    specs = figure_specs(Path(args.config).resolve())
    run = Path(args.run).resolve()
    jobs = []
    for fig, spec in specs.items():
        kind, files = figure_inputs(fig, spec, run)
        missing = [f for f in files if not Path(f).exists()]
        if missing:
            raise SystemExit(f"{fig}: {missing[0]} is missing: run the default pipeline first (snakemake --cores all)")
        jobs.append((fig, json.dumps({kind: files}), json.dumps(spec)))
    start = time.perf_counter()
    seconds = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = str(Path(tmp) / "vega-embed.js")
        write = timed(["-c", WRITE, bundle], "writing the bundle")
        for p in range(args.passes):
            for fig, inputs, spec in jobs:
                for mode in (MODES if p % 2 == 0 else MODES[::-1]):
                    s = timed(["-c", DRIVER, fig, inputs, spec, str(Path(tmp) / f"{fig}-{mode}"), bundle if mode == "bundle" else ""],
                              f"{fig} ({mode})")
                    seconds[mode].append({"figure": fig, "pass": p, "order": sum(map(len, seconds.values())), "seconds": s})
                    print(f"pass {p} {fig} {mode}: {s:.2f} s", flush=True)
    modes = {mode: {**mode_stats(rows, args.passes), "runs": rows} for mode, rows in seconds.items()}
    report = {"machine": machine(), "versions": {**package_versions(), **{name: version(name) for name in FIGURE_PACKAGES}},
              "tables_made_by": tables_commit(jobs), "figures": len(jobs), "passes": args.passes,
              "write_seconds": write, "seconds": round(time.perf_counter() - start),
              "labels": {"bundle": "the run's bundle (rule vega_bundle)", "inline": "bundled in the job (inline=True)"},
              "modes": modes}
    print(table(report))
    print(summary(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(args.out)) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
