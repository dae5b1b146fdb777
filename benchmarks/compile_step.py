"""The engine's soft-prompt step as it runs (eager) against the same step with the model's forward
compiled by ``torch.compile`` (inductor, dynamic shapes), per dtype: what fusing the step's
elementwise work (norms, activations, rotary embeddings, residual adds) would give on this CPU,
and what compiling costs.

    python benchmarks/compile_step.py [--model results/models/smollm2] [--dtypes bf16 fp32]
                                      [--rows 64] [--steps 12] [--out FILE.json]

Per dtype, two fresh loads of the model: eager, then compiled (``model.forward =
torch.compile(model.forward, dynamic=True)``, inductor's caches in a new empty folder, so the
compile is a cold one, as in a fresh tuning job). Each runs a 3-step tuning first (for the
compiled model: the compile, timed as ``compile_seconds``, the wall time of that tuning less the
eager one's), then a tuning of ``--steps`` steps of ``--rows`` rows with no row stopping, whose
seconds per step are timed from the third step on. ``matmul_share`` is
``engine_throughput.matmul_seconds`` (the step's linear-layer matmuls alone, at its shapes; timed
once per dtype, after the eager leg) over each leg's step; ``first_loss_rel_diff`` the largest relative difference of the rows' first-step KL
between the two. ``break_even_steps``: the steps of one batch after which the compile has paid
for itself. Then a batch of fewer rows (as rows stop) runs on the compiled model, to show whether
it compiles again (``rows_drop_seconds``: that tuning's wall time against eager's).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from distreach.engine import TuneConfig, tune
from distreach.io import atomic_path, package_versions
from distreach.models import DTYPES, auto_dtype, load_materialised, machine

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("engine_throughput", HERE / "engine_throughput.py")
engine_throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(engine_throughput)


def timed_tuning(lm, p, seeds, steps: int) -> tuple[float, float, list[float]]:
    """(wall seconds of the tuning, seconds per step from its third step on (None for a tuning
    of 3 steps or fewer), first-step KL per row)."""
    marks = []
    t0 = time.perf_counter()
    res = tune(lm, p, seeds, TuneConfig(max_steps=steps, patience=steps, batch_size=len(seeds)),
               on_step=lambda step, active: marks.append(time.perf_counter()), record_curve=True)
    wall = time.perf_counter() - t0
    step_s = (marks[-1] - marks[2]) / (len(marks) - 3) if len(marks) > 3 else None
    return wall, step_s, res.curve[:, 0].tolist()


def leg(folder: str, dtype: str, rows: int, steps: int, compiled: bool) -> dict:
    lm = load_materialised(folder, dtype=dtype, device="cpu")[0]
    if compiled:
        lm.model.forward = torch.compile(lm.model.forward, dynamic=True)
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(rows, lm.vocab_size, generator=g) * 2.5, -1).numpy()
    seeds = list(range(rows))
    first_wall = timed_tuning(lm, p, seeds, 3)[0]
    wall, step_s, first = timed_tuning(lm, p, seeds, steps)
    fewer = max(1, rows * 3 // 5)
    drop_wall = timed_tuning(lm, p[:fewer], seeds[:fewer], 4)[0]
    out = {"first_tuning_seconds": first_wall, "step_seconds": step_s, "first_losses": first,
           "rows_drop_rows": fewer, "rows_drop_seconds": drop_wall}
    if not compiled:  # the matmuls alone, once per dtype: the same seconds divide both legs' steps
        out["matmul_seconds"] = engine_throughput.matmul_seconds(lm.model, rows, TuneConfig().prefix_len, DTYPES[dtype])
    return out


def run(folder: str, dtype: str, rows: int, steps: int) -> dict:
    print(f"{dtype}: eager", flush=True)
    eager = leg(folder, dtype, rows, steps, compiled=False)
    print(f"{dtype}: compiled (a cold compile)", flush=True)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        torch._dynamo.reset()
        comp = leg(folder, dtype, rows, steps, compiled=True)
    compile_s = comp["first_tuning_seconds"] - eager["first_tuning_seconds"]
    saved = eager["step_seconds"] - comp["step_seconds"]
    for side in (eager, comp):
        side["matmul_share"] = eager["matmul_seconds"] / side["step_seconds"]
    diff = max(abs(a - b) / abs(a) for a, b in zip(eager["first_losses"], comp["first_losses"]))
    return {"dtype": dtype, "rows": rows, "eager": eager, "compiled": comp, "compile_seconds": compile_s,
            "speedup": eager["step_seconds"] / comp["step_seconds"], "first_loss_rel_diff": diff,
            "break_even_steps": compile_s / saved if saved > 0 else None}


def table(results: list[dict]) -> str:
    """The markdown table of :func:`run`'s results."""
    lines = ["| dtype | rows | s per step, eager | s per step, compiled | speedup | matmul share, eager | matmul share, compiled "
             "| compile (s) | steps of one batch to pay for it | fewer rows: s eager, s compiled | first-step loss rel. diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        e, c = r["eager"], r["compiled"]
        even = "never" if r["break_even_steps"] is None else f"{r['break_even_steps']:,.0f}"
        lines.append(f"| {r['dtype']} | {r['rows']} | {e['step_seconds']:.3f} | {c['step_seconds']:.3f} | {r['speedup']:.2f} "
                     f"| {e['matmul_share']:.2f} | {c['matmul_share']:.2f} | {r['compile_seconds']:.0f} | {even} "
                     f"| {e['rows_drop_seconds']:.1f}, {c['rows_drop_seconds']:.1f} | {r['first_loss_rel_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="results/models/smollm2", help="a materialised model folder")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=["fp32", "bf16"],
                    help="default: the pipeline's dtype auto choice on this CPU")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path, help="write the results (and the machine, threads and package versions) as JSON here")
    args = ap.parse_args()
    if args.rows < 2 or args.steps < 4:
        raise SystemExit("--rows must be at least 2 and --steps at least 4")
    start = time.perf_counter()
    results = [run(args.model, dtype, args.rows, args.steps) for dtype in (args.dtypes or [auto_dtype("cpu")])]
    print(table(results))
    if args.out:
        report = {"machine": machine(), "threads": torch.get_num_threads(), "versions": package_versions(),
                  "model": args.model, "steps": args.steps, "seconds": round(time.perf_counter() - start),
                  "results": results}
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
