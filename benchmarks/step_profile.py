"""Where a tuning step's time goes: torch.profiler over the engine's steps at the default run's
shapes (soft prompts of 5 positions, a full CPU batch of 64 rows, 1 BOS position), per model
and dtype, with the operators' own (self) CPU time summed into groups.

    python benchmarks/step_profile.py [--models results/models/smollm2 results/models/gemma3]
                                      [--dtypes fp32] [--steps 3] [--out FILE.json]

Each (model, dtype) is warmed up with a 2-step tuning, then a tuning of 64 rows runs under the
profiler, which records ``--steps`` of its steps after the first two (the tuning's setup, made
once per batch, is left out; every row runs every step). Groups, by the operator's name:

- matmul: ``mm``, ``addmm``, ``bmm``, ``matmul``, ``linear`` (the linear layers, forward and
  gradient to the inputs, and the output layer);
- attention: ``scaled_dot_product_attention`` and its kernels;
- softmax and KL: ``softmax``, ``log_softmax``, ``kl_div``, ``xlogy``, ``logsumexp`` and their
  backward;
- optimiser: ``_foreach_*``, ``_fused_adam*``, ``addcdiv``, ``addcmul``, ``lerp`` (AdamW);
- copies and casts: ``copy_``, ``to``, ``_to_copy``, ``contiguous``, ``clone``, ``cat``, ``index``,
  ``gather``, ``expand``;
- other: the rest (norms, activations, elementwise arithmetic, autograd bookkeeping);
- Python between ops: the self time of the profiler's step spans, time spent in no operator.

The shares are of the summed self CPU time (every operator and the step spans), so they add up
to 1 up to rounding. One step's seconds are measured by the clock over the recorded steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from distreach.engine import TuneConfig, tune
from distreach.io import atomic_path, package_versions
from distreach.models import load_materialised, machine

ROWS, PREFIX_LEN = 64, 5
GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention", "attention"),
    "softmax and KL": ("softmax", "kl_div", "xlogy", "logsumexp"),
    "optimiser": ("_foreach", "_fused_adam", "addcdiv", "addcmul", "lerp"),
    "copies and casts": ("aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone", "aten::cat",
                         "aten::index", "aten::gather", "aten::expand"),
}


def group_of(name: str) -> str:
    if name.startswith("ProfilerStep"):  # the step's own span: time in no operator
        return "Python between ops"
    for group, keys in GROUPS.items():
        if any(k in name for k in keys):
            return group
    return "other"


def profile_one(folder: str, dtype: str, steps: int) -> dict:
    lm = load_materialised(folder, dtype=dtype, device="cpu")[0]
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(ROWS, lm.vocab_size, generator=g) * 2.5, -1).numpy()
    seeds = list(range(ROWS))
    tune(lm, p, seeds, TuneConfig(max_steps=2, prefix_len=PREFIX_LEN))  # warm-up
    cfg = TuneConfig(max_steps=steps + 3, patience=steps + 3, prefix_len=PREFIX_LEN)
    marks = []

    def on_step(step, active):  # steps 0 and 1 (with the tuning's setup) are not recorded
        marks.append(time.perf_counter())
        prof.step()

    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=1, active=steps, repeat=1),
                 acc_events=True) as prof:
        tune(lm, p, seeds, cfg, on_step=on_step)
    wall = marks[steps + 1] - marks[1]  # the recorded steps: 2 .. steps + 1
    groups: dict[str, float] = {}
    top: list[tuple[str, float]] = []
    for ev in prof.key_averages():
        us = ev.self_cpu_time_total
        if us <= 0:
            continue
        groups[group_of(ev.key)] = groups.get(group_of(ev.key), 0.0) + us
        top.append((ev.key, us))
    total = sum(groups.values())
    top.sort(key=lambda kv: -kv[1])
    return {
        "model": Path(folder).name, "dtype": dtype, "rows": ROWS, "prefix_len": PREFIX_LEN, "steps": steps,
        "step_seconds": wall / steps, "profiled_seconds_per_step": total / 1e6 / steps,
        "shares": {k: v / total for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": k, "share": v / total} for k, v in top[:12]],
    }


def table(runs: list[dict]) -> str:
    names = [*GROUPS, "other", "Python between ops"]
    lines = ["| model | dtype | s per step | " + " | ".join(names) + " |", "|---" * (len(names) + 3) + "|"]
    for r in runs:
        lines.append(f"| {r['model']} | {r['dtype']} | {r['step_seconds']:.2f} | "
                     + " | ".join(f"{r['shares'].get(n, 0.0):.2f}" for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["results/models/smollm2", "results/models/gemma3"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs = []
    for folder in args.models:
        for dtype in args.dtypes:
            print(f"{folder} {dtype}: profiling {args.steps} steps of {ROWS} rows ...", flush=True)
            runs.append(profile_one(folder, dtype, args.steps))
            print("  top operators:", ", ".join(f"{o['op']} {o['share']:.2f}" for o in runs[-1]["top_ops"][:6]), flush=True)
    report = {"machine": machine(), "threads": torch.get_num_threads(), "versions": package_versions(), "runs": runs}
    if args.out:
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
    print(table(runs))


if __name__ == "__main__":
    main()
