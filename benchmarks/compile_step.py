"""The engine's soft-prompt step as it runs (eager) against the same step with the model's forward
compiled by ``torch.compile`` (inductor, dynamic shapes), per dtype: what fusing the step's
elementwise work (norms, activations, rotary embeddings, residual adds) would give on this CPU,
and what compiling costs.

    python benchmarks/compile_step.py [--model results/models/smollm2] [--dtypes bf16 fp32]
                                      [--rows 64] [--steps 12] [--out FILE.json]

Per dtype, two fresh loads of the model: eager, then compiled (``model.forward =
torch.compile(model.forward, dynamic=True)``, with inductor's defaults, under
``torch._inductor.utils.fresh_cache()``: an empty cache folder and in-memory caches, so the compile
is a cold one, as in a pipeline's first tuning job; later jobs on one machine would find inductor's
disk cache warm). Each leg runs a 3-step tuning first (for the compiled model: the compile, timed as
``compile_seconds``, the wall time of that tuning less the eager one's), then a tuning of
``--steps`` steps of ``--rows`` rows with no row stopping, whose steps after the third are timed
(``step_seconds``), then a tuning of 4 steps of fewer rows (3/5 of them), as a batch shrinks when
its rows stop (``rows_drop_seconds``: its wall time). ``graphs`` counts the graphs dynamo has
compiled during each of the three tunings (its ``unique_graphs`` counter): a tuning that compiles
nothing new leaves it as it was. ``matmul_share`` is ``engine_throughput.matmul_seconds`` (the
step's linear-layer matmuls alone, at its shapes; timed once per dtype, after the eager leg) over
each leg's step; ``first_loss_rel_diff`` the largest relative difference of the rows' first-step
KL between the two legs. ``break_even_steps``: the steps of one batch after which the compile
would have paid for itself at the measured step times (None where the compiled step was not
faster). The compile needs what inductor's CPU backend needs: a C++ compiler and Python's headers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
from torch._inductor.utils import fresh_cache

from distreach.engine import TuneConfig, tune
from distreach.io import atomic_path, package_versions
from distreach.models import DTYPES, auto_dtype, load_materialised, machine

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("engine_throughput", HERE / "engine_throughput.py")
engine_throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(engine_throughput)


DROP_STEPS = 4  # steps of the tuning of fewer rows


def graphs() -> int:
    """How many graphs dynamo has compiled in this process."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def timed_tuning(lm, p, seeds, steps: int) -> tuple[float, float | None, list[float]]:
    """(wall seconds of the tuning, seconds per step of its steps after the third (None for a
    tuning of 3 steps or fewer), first-step KL per row)."""
    marks = []
    t0 = time.perf_counter()
    res = tune(lm, p, seeds, TuneConfig(max_steps=steps, patience=steps, batch_size=len(seeds)),
               on_step=lambda step, active: marks.append(time.perf_counter() if active == len(seeds) else None),
               record_curve=True)
    wall = time.perf_counter() - t0
    if len(marks) != steps or None in marks:
        raise SystemExit(f"rows of a tuning of {len(seeds)} rows stopped before its {steps} steps: no step time of its shape")
    step_s = (marks[-1] - marks[2]) / (len(marks) - 3) if len(marks) > 3 else None
    return wall, step_s, res.curve[:, 0].tolist()


def leg(folder: str, dtype: str, rows: int, steps: int, compiled: bool) -> dict:
    lm = load_materialised(folder, dtype=dtype, device="cpu")[0]
    if compiled:
        lm.model.forward = torch.compile(lm.model.forward, dynamic=True)
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(rows, lm.vocab_size, generator=g) * 2.5, -1).numpy()
    seeds = list(range(rows))
    counted = [graphs()]
    first_wall = timed_tuning(lm, p, seeds, 3)[0]
    counted.append(graphs())
    wall, step_s, first = timed_tuning(lm, p, seeds, steps)
    counted.append(graphs())
    fewer = rows * 3 // 5
    drop_wall = timed_tuning(lm, p[:fewer], seeds[:fewer], DROP_STEPS)[0]
    counted.append(graphs())
    out = {"first_tuning_seconds": first_wall, "tuning_seconds": wall, "step_seconds": step_s, "first_losses": first,
           "rows_drop_rows": fewer, "rows_drop_steps": DROP_STEPS, "rows_drop_seconds": drop_wall,
           "graphs": [b - a for a, b in zip(counted, counted[1:])]}
    if not compiled:  # the matmuls alone, once per dtype: the same seconds divide both legs' steps
        out["matmul_seconds"] = engine_throughput.matmul_seconds(lm.model, rows, TuneConfig().prefix_len, DTYPES[dtype])
    return out


def run(folder: str, dtype: str, rows: int, steps: int) -> dict:
    print(f"{dtype}: eager", flush=True)
    eager = leg(folder, dtype, rows, steps, compiled=False)
    print(f"{dtype}: compiled (a cold compile)", flush=True)
    torch._dynamo.reset()
    with fresh_cache():
        comp = leg(folder, dtype, rows, steps, compiled=True)
    compile_s = comp["first_tuning_seconds"] - eager["first_tuning_seconds"]
    saved = eager["step_seconds"] - comp["step_seconds"]
    for side in (eager, comp):
        side["matmul_share"] = eager["matmul_seconds"] / side["step_seconds"]
    diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(eager["first_losses"], comp["first_losses"]))
    return {"dtype": dtype, "rows": rows, "eager": eager, "compiled": comp, "compile_seconds": compile_s,
            "speedup": eager["step_seconds"] / comp["step_seconds"], "first_loss_rel_diff": diff,
            "break_even_steps": compile_s / saved if saved > 0 else None}


def steps_to_pay(r: dict) -> str:
    """A result's break-even steps as the table and README give them: two significant figures, or
    "never"."""
    return "never" if r["break_even_steps"] is None else f"{float(format(r['break_even_steps'], '.2g')):,.0f}"


def table(results: list[dict]) -> str:
    """The markdown table of :func:`run`'s results."""
    lines = ["| dtype | rows | s per step, eager | s per step, compiled | speedup | matmul share, eager | matmul share, compiled "
             "| compile (s) | steps of one batch to pay for it | fewer rows: s eager, s compiled | first-step loss rel. diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        e, c = r["eager"], r["compiled"]
        lines.append(f"| {r['dtype']} | {r['rows']} | {e['step_seconds']:.3f} | {c['step_seconds']:.3f} | {r['speedup']:.2f} "
                     f"| {e['matmul_share']:.2f} | {c['matmul_share']:.2f} | {r['compile_seconds']:.0f} | {steps_to_pay(r)} "
                     f"| {e['rows_drop_seconds']:.1f}, {c['rows_drop_seconds']:.1f} | {r['first_loss_rel_diff']:.1e} |")
    return "\n".join(lines)


def _graphs(n: int) -> str:
    return "no new graph" if n == 0 else f"{n} new graph" + ("s" if n > 1 else "")


def summary(report: dict) -> str:
    """What benchmarks/README.md says under the table, from a results file of this script."""
    parts = []
    for r in report["results"]:
        e, c = r["eager"], r["compiled"]
        parts.append(
            f"{r['dtype']}: the compiled step took {1 / r['speedup']:.2f}x the eager step's time, after a cold compile of "
            f"{r['compile_seconds']:.0f} s; a second tuning of the same {r['rows']} rows compiled "
            f"{_graphs(c['graphs'][1])}, a tuning of {c['rows_drop_rows']} rows compiled {_graphs(c['graphs'][2])} "
            f"({c['rows_drop_seconds']:.1f} s for {c['rows_drop_steps']} steps, eager {e['rows_drop_seconds']:.1f} s); "
            f"matmul share {e['matmul_share']:.2f} eager, {c['matmul_share']:.2f} compiled; the first-step KL of the "
            f"two within {r['first_loss_rel_diff']:.1e} relative")
    return ". ".join(parts) + "."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="results/models/smollm2", help="a materialised model folder")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=["fp32", "bf16"],
                    help="default: the pipeline's dtype auto choice on this CPU")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path, help="write the results (and the machine, threads and package versions) as JSON here")
    args = ap.parse_args()
    if args.rows < 4 or args.steps < 4:
        raise SystemExit("--rows and --steps must be at least 4")
    start = time.perf_counter()
    results = [run(args.model, dtype, args.rows, args.steps) for dtype in (args.dtypes or [auto_dtype("cpu")])]
    report = {"machine": machine(), "threads": torch.get_num_threads(), "versions": package_versions(),
              "model": args.model, "steps": args.steps, "seconds": round(time.perf_counter() - start),
              "results": results}
    print(table(results))
    print(summary(report))
    if args.out:
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
