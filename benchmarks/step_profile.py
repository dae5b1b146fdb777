"""Where a tuning step's time goes: torch.profiler over the engine's soft-prompt steps (its
default prefix length after BOS, ``--rows`` rows, 64 by default), per model and dtype.

    python benchmarks/step_profile.py [--models results/models/smollm2 results/models/gemma3]
                                      [--dtypes fp32] [--rows 64] [--steps 3] [--out FILE.json]

Needs the models materialised by the pipeline (``results/models/<name>``). Each (model, dtype)
is warmed up with a 2-step tuning; then ``--steps`` steps are timed without the profiler (the
step seconds reported), then a tuning runs under the profiler, which records ``--steps`` of its
steps after the first two (the tuning's setup, made once per batch, is left out; every row runs
every step). Two views of the recorded time:

- **operators**: each operator's own (self) CPU time, by exact name: matmul (``mm``, ``addmm``,
  ``matmul``, ``linear``: the linear layers), attention (the scaled-dot-product kernels and their
  backward, and ``bmm``: eager attention's products of queries, keys and values, the models'
  only batched matmuls), softmax and KL (``log_softmax``, ``softmax``, ``kl_div``, ``xlogy`` and their backward
  kernels), copies and casts (``copy_``, ``to``, ``_to_copy``, ``contiguous``, ``clone``, ``cat``,
  ``index``, ``gather``), other ``aten::`` operators, and time in no operator (every event that
  is not an ``aten::`` operator: the step spans, autograd's nodes and the optimiser's bookkeeping,
  Python and dispatch between operators); shares of the recorded time, adding up to 1;
- **phases** (spans the script opens around the engine's methods): the forward pass and loss
  (``_Batch.losses``), the KL over the vocabulary within it (``distreach.infotheory.kl`` as the
  engine calls it; its forward only: its backward runs in autograd's nodes), the per-step records of each row (``_Batch._record``: its best KL so far,
  q's entropy and top tokens at it), the optimiser's update (``AdamW.step``); shares of the
  recorded time, inclusive of their operators; the rest is the backward pass and the step's own code.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from distreach import engine
from distreach.engine import TuneConfig, tune
from distreach.io import atomic_path, package_versions
from distreach.models import load_materialised, machine

OPS = {
    "matmul": {"mm", "addmm", "matmul", "linear"},
    "attention": {"bmm", "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                  "_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_attention_math"},
    "softmax and KL": {"log_softmax", "_log_softmax", "_log_softmax_backward_data", "softmax", "_softmax",
                       "_softmax_backward_data", "kl_div", "xlogy"},
    "copies and casts": {"copy_", "to", "_to_copy", "contiguous", "clone", "cat", "index", "gather"},
}
OUTSIDE = "no operator"
PHASES = {"forward and loss": (engine._Batch, "losses"), "KL": (engine, "kl"), "records": (engine._Batch, "_record"),
          "optimiser": (torch.optim.AdamW, "step")}


def group_of(name: str) -> str:
    """The operator group of a profiler event's name."""
    if not name.startswith("aten::"):
        return OUTSIDE
    op = name.removeprefix("aten::")
    for group, names in OPS.items():
        if op in names:
            return group
    return "other"


@contextlib.contextmanager
def phase_spans():
    """Within the block, each phase's method runs inside a profiler span ``phase: <phase>``; the
    methods are put back on leaving."""
    saved = []
    for phase, (owner, attr) in PHASES.items():
        method = getattr(owner, attr)

        def spanned(*args, _method=method, _label=f"phase: {phase}", **kw):
            with record_function(_label):
                return _method(*args, **kw)

        saved.append((owner, attr, owner.__dict__.get(attr)))
        setattr(owner, attr, functools.wraps(method)(spanned))
    try:
        yield
    finally:
        for owner, attr, own in reversed(saved):
            if own is None:
                delattr(owner, attr)  # inherited: the base class's method shows through again
            else:
                setattr(owner, attr, own)


def profile_one(folder: str, dtype: str, rows: int, steps: int) -> dict:
    if steps < 1 or rows < 1:
        raise SystemExit("--steps and --rows must be at least 1")
    with phase_spans():  # around the timed steps too: they and the profiled ones run the same code
        return _profile(folder, dtype, rows, steps)


def _profile(folder: str, dtype: str, rows: int, steps: int) -> dict:
    lm = load_materialised(folder, dtype=dtype, device="cpu")[0]
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(rows, lm.vocab_size, generator=g) * 2.5, -1).numpy()
    seeds = list(range(rows))
    cfg = TuneConfig(max_steps=steps + 2, patience=steps + 2, batch_size=rows)
    tune(lm, p, seeds, TuneConfig(max_steps=2, batch_size=rows))  # warm-up
    marks = []

    def mark(step, active):
        if active != rows:
            raise RuntimeError(f"step {step}: {active} of {rows} rows ran")
        marks.append(time.perf_counter())

    tune(lm, p, seeds, cfg, on_step=mark)
    step_s = (marks[steps + 1] - marks[1]) / steps  # steps 2 .. steps + 1, as profiled below
    marks.clear()

    def on_step(step, active):  # steps 0 and 1 (with the tuning's setup) are not recorded
        mark(step, active)
        prof.step()

    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=1, active=steps, repeat=1),
                 acc_events=True) as prof:
        tune(lm, p, seeds, cfg, on_step=on_step)
    recorded = marks[steps + 1] - marks[1]
    groups: dict[str, float] = {}
    phases = dict.fromkeys(PHASES, 0.0)
    top = []
    for ev in prof.key_averages():
        if ev.key.startswith("phase: "):
            phases[ev.key[len("phase: "):]] += ev.cpu_time_total / 1e6
        if ev.self_cpu_time_total > 0:
            group, seconds = group_of(ev.key), ev.self_cpu_time_total / 1e6
            groups[group] = groups.get(group, 0.0) + seconds
            if ev.key.startswith("aten::"):
                top.append((ev.key, seconds))
    total = sum(groups.values())
    top.sort(key=lambda kv: -kv[1])
    return {
        "model": Path(folder).name, "dtype": dtype, "rows": rows, "prefix_len": cfg.prefix_len, "steps": steps,
        "step_seconds": step_s, "profiled_step_seconds": recorded / steps,
        "operators": {k: v / total for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "phases": {k: v / total for k, v in phases.items()},
        "top_operators": [{"op": k, "share": v / total} for k, v in top[:12]],
    }


def table(runs: list[dict]) -> str:
    ops, phases = [*OPS, "other", OUTSIDE], list(PHASES)
    lines = ["| model | rows | s per step | " + " | ".join(ops) + " | " + " | ".join(f"phase: {p}" for p in phases) + " |",
             "|---" * (len(ops) + len(phases) + 3) + "|"]
    for r in runs:
        lines.append(f"| {r['model']} ({r['dtype']}) | {r['rows']} | {r['step_seconds']:.2f} | "
                     + " | ".join(f"{r['operators'].get(n, 0.0):.2f}" for n in ops) + " | "
                     + " | ".join(f"{r['phases'][p]:.2f}" if p in r["phases"] else "-" for p in phases) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["results/models/smollm2", "results/models/gemma3"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32"])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    t0, runs = time.perf_counter(), []
    for folder in args.models:
        for dtype in args.dtypes:
            print(f"{folder} {dtype}: {args.rows} rows, {args.steps} steps timed, then profiled ...", flush=True)
            runs.append(profile_one(folder, dtype, args.rows, args.steps))
            print("  top operators:", ", ".join(f"{o['op']} {o['share']:.2f}" for o in runs[-1]["top_operators"][:6]),
                  flush=True)
    report = {"machine": machine(), "threads": torch.get_num_threads(), "versions": package_versions(),
              "seconds": round(time.perf_counter() - t0), "runs": runs}
    if args.out:
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
    print(table(runs))
    print(f"{report['seconds']} s")


if __name__ == "__main__":
    main()
