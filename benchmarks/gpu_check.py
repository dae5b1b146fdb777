"""One GPU check: Fig. 1 at two paper shapes and the stand-ins' DAG on the GPU, numbers in one JSON.

Run by benchmarks/gpu_check.sh (which first installs the carried wheels). Three parts, one after
another, each in its own process group with a time budget (a part over it is stopped and
recorded as "timeout"); each part runs whatever happened to the ones before it:

  fig1-llama3.2-1b  benchmarks/gpu_fig1.py at the Llama-3.2-1B shape, the paper's grid (every
                    0.05 bits: 341 levels, 5 inits, up to 500 steps)
  fig1-llama3-8b    benchmarks/gpu_fig1.py at the Llama-3-8B shape, a grid 20x coarser (every
                    1 bit: 18 levels, 5 inits, up to 500 steps) so that it fits its budget;
                    gpu_fig1 scales its time per level to the paper's grid
                    (paper_grid_gpu_minutes: an upper bound, as fewer rows fill smaller batches)
  standins-dag      the workflow on configs/paper-stand-ins.yaml with device=cuda, up to the collected
                    tables and the claims report (and the figures where altair and vl-convert are
                    installed); the POS experiments are left out (spaCy is not carried)

The JSON (rewritten after every part, so a killed run still leaves the parts done) has, per
part: status, exit code, wall seconds, GPU-minutes, prompt-steps/s, TFLOP/s and what the part
reported; and the device, CUDA and package versions. --smoke runs the same parts tiny on the
CPU (gpu_fig1 --tiny, the DAG with device=cpu), to test this script and the wheel set.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("distreach") is None:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from distreach.figureregistry import FIGURES, figure_experiments  # noqa: E402
from distreach.figurefiles import CLAIMS_REPORT, FIGURE, FIGURE_EXTENSIONS, FIGURE_FILES  # noqa: E402
from distreach.io import write_json  # noqa: E402

STAND_INS_CONFIG = REPO / "configs" / "paper-stand-ins.yaml"
# part: (seconds on the GPU, seconds in --smoke); the GPU budgets add up to 9.2 minutes
# (measured on an H200: 199, 87 and 83 s)
BUDGETS = {"fig1-llama3.2-1b": (280, 900), "fig1-llama3-8b": (120, 900), "standins-dag": (150, 1800)}
# grid step in bits per shape on the GPU (the paper's is 0.05: 340 levels), so each fits its budget
STEPS = {"llama3.2-1b": 0.05, "llama3-8b": 1.0}
PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "numpy", "pyarrow",
            "polars", "scipy", "pyyaml", "snakemake", "jsonschema", "altair", "vl-convert-python")
TAIL_LINES = 15


def without_pos(config: dict) -> tuple[dict, list[str]]:
    """The config less what needs POS tables (spaCy): target families of kind pos and those
    derived from them, their experiments, and the figures that read either."""
    targets = config["targets"]

    def needs_pos(family: str) -> bool:
        entry = targets[family]
        return entry.get("kind") == "pos" or ("of" in entry and needs_pos(entry["of"]))

    families = {f for f in targets if needs_pos(f)}
    experiments = {e for e, entry in config["experiments"].items() if entry["targets"] in families}
    figures = {
        fig for fig, spec in config.get("figures", {}).items()
        if FIGURES[fig].reads == "pos" or set(figure_experiments(spec)) & experiments
    }
    out = dict(config)
    out["targets"] = {k: v for k, v in targets.items() if k not in families}
    out["experiments"] = {k: v for k, v in config["experiments"].items() if k not in experiments}
    out["figures"] = {k: v for k, v in config.get("figures", {}).items() if k not in figures}
    return out, sorted(families | experiments | figures)


def dag_targets(config: dict, figures: bool) -> list[str]:
    """Collected tables and the claims report (and the figures if drawn)."""
    out = [FIGURE_FILES["tables"].format(e) for e in config["experiments"]]
    out += [CLAIMS_REPORT.format(ext="md"), CLAIMS_REPORT.format(ext="html")]
    if figures:
        out += [FIGURE.format(fig=fig, ext=ext) for fig in config["figures"] for ext in FIGURE_EXTENSIONS]
    return out


def job_seconds(workdir: Path) -> dict[str, dict]:
    """Jobs and job seconds per rule, from Snakemake's records of the outputs it made
    (.snakemake/metadata: rule, job_hash, starttime, endtime per output; a job's outputs
    share its hash and end time)."""
    jobs = {}
    for path in (workdir / ".snakemake" / "metadata").glob("*"):
        try:
            rec = json.loads(path.read_text())
            key = (rec["rule"], rec["job_hash"], rec["endtime"])
            jobs[key] = min(jobs.get(key, rec["starttime"]), rec["starttime"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    per_rule: dict[str, dict] = {}
    for (rule, _, end), begin in jobs.items():
        entry = per_rule.setdefault(rule, {"jobs": 0, "seconds": 0.0})
        entry["jobs"] += 1
        entry["seconds"] += end - begin
    return {rule: {"jobs": e["jobs"], "seconds": round(e["seconds"], 1)} for rule, e in sorted(per_rule.items())}


def run_part(name: str, cmd: list[str], budget: float, log: Path, env: dict, cwd: Path) -> dict:
    """Run ``cmd`` in its own process group, output to ``log``; stop the group after ``budget`` s."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, status = proc.returncode, "timeout"
    part = {"status": status, "exit_code": rc, "budget_seconds": budget,
            "wall_seconds": round(time.monotonic() - start, 1), "command": " ".join(cmd), "log": str(log)}
    if status != "ok":
        part["log_tail"] = log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    return part


def fig1_numbers(folder: Path) -> dict:
    path = folder / "gpu_fig1.json"
    if not path.exists():
        return {}
    rep = json.loads(path.read_text())
    return {
        "gpu_minutes": rep["gpu_minutes"],
        "paper_grid_gpu_minutes": rep["paper_grid_gpu_minutes"],
        "prompt_steps_per_second": round(rep["prompt_steps_per_second"], 1),
        "tflops": round(rep["achieved_tflops"], 2),
        "device": rep["device"],
        "report": {k: v for k, v in rep.items() if k != "packages"},
    }


def dag_numbers(workdir: Path, config: dict) -> dict:
    """Job time per rule, and the tuning jobs' prompt-steps (rows x steps of every collected table)
    per second of tuning-job time."""
    import polars as pl

    rules = job_seconds(workdir)
    tables = [workdir / FIGURE_FILES["tables"].format(e) for e in config["experiments"]]
    found = [t for t in tables if t.exists()]
    row_steps = int(sum(pl.read_ipc(t)["steps"].sum() for t in found))
    rows = int(sum(pl.read_ipc(t).height for t in found))
    tuning = rules.get("tune_job", {}).get("seconds")
    return {
        "gpu_minutes": round(tuning / 60, 2) if tuning else None,
        "prompt_steps_per_second": round(row_steps / tuning, 1) if tuning else None,
        "tflops": None,
        "tflops_note": "not counted: tiny random models, jobs dominated by start-up and loading",
        "gpu_minutes_note": "tune_job job time (model loading included); the GPU is held for wall_seconds",
        "collected_tables": f"{len(found)} of {len(tables)}",
        "rows": rows,
        "row_steps": row_steps,
        "claims_report": (workdir / CLAIMS_REPORT.format(ext="md")).exists(),
        "jobs_by_rule": rules,
    }


def versions() -> dict:
    out = {"python": platform.python_version(), "executable": sys.executable}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict:
    info = {"nvidia_smi": None}
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True)
        info["nvidia_smi"] = proc.stdout.strip() or proc.stderr.strip()
    try:
        import torch  # not initialising CUDA here: the parts' processes use the GPU

        info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    except ImportError as exc:
        info["torch"] = f"not importable: {exc}"
    info["cpus"] = os.cpu_count()
    return info


def summary_line(name: str, part: dict) -> str:
    line = f"gpu_check: {name}: {part['status']}"
    if part["status"] == "failed":
        line += f" (exit {part['exit_code']})"
    line += f", {part['wall_seconds']} s of {part['budget_seconds']} s"
    if part.get("prompt_steps_per_second") is not None:
        line += f"; {part['prompt_steps_per_second']} prompt-steps/s"
    if part.get("tflops") is not None:
        line += f", {part['tflops']} TFLOP/s"
    if part.get("gpu_minutes") is not None:
        line += f", {part['gpu_minutes']} GPU-min"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default="benchmarks/out/gpu_check.json", help="the JSON file to write")
    ap.add_argument("--work", default="benchmarks/out/gpu_check",
                    help="folder for the parts' outputs and logs (the DAG's is emptied first)")
    ap.add_argument("--smoke", action="store_true", help="every part tiny, on the CPU")
    ap.add_argument("--cores", type=int, default=None, help="snakemake --cores (default: all; --smoke: 2)")
    ap.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                    help=f"override a part's time budget; parts: {', '.join(BUDGETS)}")
    ap.add_argument("--parts", default=",".join(BUDGETS), help="comma-separated parts to run (default: all)")
    args = ap.parse_args()

    budgets = {name: b[1] if args.smoke else b[0] for name, b in BUDGETS.items()}
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in budgets or not seconds.replace(".", "", 1).isdigit():
            ap.error(f"--budget {item!r}: expected PART=SECONDS with PART one of {', '.join(BUDGETS)}")
        budgets[name] = float(seconds)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in BUDGETS]
    if unknown:
        ap.error(f"--parts: unknown {', '.join(unknown)} (parts: {', '.join(BUDGETS)})")
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    cores = args.cores or (min(2, os.cpu_count() or 1) if args.smoke else os.cpu_count() or 1)
    missing = [m for m in ("altair", "vl_convert") if importlib.util.find_spec(m) is None]
    drawn = not missing
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)}
    py = sys.executable

    report = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished": False,
        "mode": "smoke (tiny, CPU)" if args.smoke else "gpu",
        "host": platform.node(),
        "device": device_info(),
        "packages": versions(),
        "figures_drawn": drawn,
        "parts": {},
    }
    dev = report["device"]
    print(f"gpu_check: {report['mode']}: {dev['nvidia_smi'] or 'no nvidia-smi'}; torch {dev.get('torch')} "
          f"(CUDA {dev.get('cuda')}, available: {dev.get('cuda_available')}); {dev['cpus']} CPUs; "
          f"figures {'drawn' if drawn else 'skipped (not installed: ' + ', '.join(missing) + ')'}", flush=True)
    start = time.monotonic()

    for name in parts:
        folder = work / name
        if name.startswith("fig1-"):
            shape = name.removeprefix("fig1-")
            cmd = [py, str(REPO / "benchmarks/gpu_fig1.py"), "--out", str(folder)]
            cmd += ["--tiny"] if args.smoke else ["--shape", shape]
            if not args.smoke:
                cmd += ["--step", str(STEPS[shape])]
            if not drawn:
                cmd.append("--no-figure")
            shutil.rmtree(folder, ignore_errors=True)
            print(f"gpu_check: {name}: running (budget {budgets[name]:g} s)", flush=True)
            part = run_part(name, cmd, budgets[name], work / f"{name}.log", env, REPO)
            part.update(fig1_numbers(folder))
        else:
            config, dropped = without_pos(yaml.safe_load(STAND_INS_CONFIG.read_text()))
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            configfile = work / f"{name}.yaml"
            configfile.write_text(yaml.safe_dump(config, sort_keys=False))
            device = "cpu" if args.smoke else "cuda"
            cmd = [py, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(folder),
                   "--configfile", str(configfile), "--config", f"device={device}", "--cores", str(cores),
                   "--scheduler", "greedy", "--keep-going", *dag_targets(config, drawn)]
            print(f"gpu_check: {name}: running (budget {budgets[name]:g} s, {cores} cores, device={device}; "
                  f"left out, needing POS tables: {', '.join(dropped)})", flush=True)
            part = run_part(name, cmd, budgets[name], work / f"{name}.log", env, REPO)
            part["left_out"] = dropped
            try:
                part.update(dag_numbers(folder, config))
            except Exception as exc:  # the part's status already says it failed; keep its numbers' error
                part["numbers_error"] = f"{type(exc).__name__}: {exc}"
        report["parts"][name] = part
        report["wall_seconds"] = round(time.monotonic() - start, 1)
        write_json(report, out)
        print(summary_line(name, part), flush=True)
        for line in part.get("log_tail", []):
            print(f"    | {line[:300]}")

    report["finished"] = True
    report["ok"] = all(p["status"] == "ok" for p in report["parts"].values())
    write_json(report, out)
    print(f"gpu_check: {'all parts ok' if report['ok'] else 'NOT all parts ok'} in {report['wall_seconds']} s; "
          f"numbers in {out}")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
