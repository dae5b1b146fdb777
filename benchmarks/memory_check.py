"""The CPU memory check's estimate against the measured peak of the batches it sizes.

    python benchmarks/memory_check.py --out benchmarks/results/cpu/memory-check.json   # about 3 minutes

Each run is a fresh process: SmolLM2-135M (``results/models/smollm2``, materialised by the pipeline)
loaded in the run's dtype, then one tuning of ``rows`` rows in one batch (``batch_size``: the batch
the check plans for), 3 steps, prompts of 5 positions. Its estimate is what
:func:`distreach.memory.estimate` says for that batch as the engine asks it (bytes per row times rows,
plus the fixed part); its peak is the process's peak resident memory while the tuning runs
(``VmHWM``, reset just before it) over its resident memory then (``VmRSS``, after a forward pass of
3 tokens has read the weights in): what the batch took beyond what the process held when the check
measured the free memory. The check plans a batch into
:data:`distreach.memory.HEADROOM` of the free memory, so it is sound where every peak is at most
1/HEADROOM times its estimate (tests/test_memory.py checks the recorded runs). Methods: soft, hard
(the paper's, one candidate), hybrid (one soft position), hard scoring 8 candidates a position, and
gcg (32 candidates a step, the largest part of its memory).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "results" / "models" / "smollm2"
# (method, rows, dtype, settings besides): the batches measured
RUNS = [
    ("soft", 16, "fp32", {}), ("soft", 64, "fp32", {}), ("soft", 64, "bf16", {}),
    ("hard", 64, "fp32", {}), ("hybrid", 64, "fp32", {"n_soft": 1}),
    ("hard", 16, "fp32", {"candidates": 8}),
    ("gcg", 16, "fp32", {"gcg_width": 32, "readable": False}), ("gcg", 64, "fp32", {"gcg_width": 32, "readable": False}),
    ("gcg", 16, "bf16", {"gcg_width": 32, "readable": False}),
]


def status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def one(method: str, rows: int, dtype: str, settings: dict) -> dict:
    """One run, in this process."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from distreach import memory
    from distreach.engine import TuneConfig, tune
    from distreach.models import load_materialised

    loaded = load_materialised(MODEL, dtype=dtype, device="cpu")[0]
    p = np.random.default_rng(0).dirichlet(np.full(loaded.vocab_size, 0.01), size=rows).astype(np.float32)
    cfg = TuneConfig(method=method, prefix_len=5, max_steps=3, patience=10, batch_size=rows, **settings)
    asked = {}
    real = memory.estimate

    def estimate(*args, **kwargs):
        asked["per_row"], asked["fixed"] = real(*args, **kwargs)
        return asked["per_row"], asked["fixed"]

    memory.estimate = estimate
    with torch.no_grad():  # the weights resident (a file's pages are read in at their first use), as in any tuning
        loaded.model(torch.tensor([[0, 1, 2]]))
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the resident memory now
    base = status("VmRSS:")
    tune(loaded, p, list(range(rows)), cfg)
    peak = status("VmHWM:") - base
    return {"method": method, "rows": rows, "dtype": dtype, "settings": settings, "per_row_bytes": asked["per_row"],
            "fixed_bytes": asked["fixed"], "estimate_bytes": asked["per_row"] * rows + asked["fixed"], "peak_bytes": peak,
            "threads": torch.get_num_threads()}


def table(res: dict) -> str:
    lines = ["| method | settings | dtype | rows | estimate (MiB) | measured peak (MiB) | peak / estimate |",
             "|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        shown = ", ".join(f"{k} {v}" for k, v in r["settings"].items() if k != "readable") or "-"
        lines.append(f"| {r['method']} | {shown} | {r['dtype']} | {r['rows']} | {r['estimate_bytes'] / 2**20:.0f} | "
                     f"{r['peak_bytes'] / 2**20:.0f} | {r['peak_bytes'] / r['estimate_bytes']:.2f} |")
    return "\n".join(lines)


def summary(res: dict) -> str:
    worst = max(res["runs"], key=lambda r: r["peak_bytes"] / r["estimate_bytes"])
    m = res["machine"]
    return (f"The largest peak is {worst['peak_bytes'] / worst['estimate_bytes']:.2f} times its estimate ({worst['method']}, "
            f"{worst['rows']} rows, {worst['dtype']}); the check plans a batch into {res['headroom']:g} of the free memory, "
            f"room for peaks up to {1 / res['headroom']:.1f} times the estimate. Measured on {m['cpu']}, {m['cores']} cores, "
            f"{'with' if m['native_bf16'] else 'without'} native bf16, code of `{res['versions'].get('distreach_commit', '?')[:7]}`.")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a run, in a fresh process: JSON of (method, rows, dtype, settings)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(*json.loads(args.one))))
        return
    if not MODEL.is_dir():
        raise SystemExit(f"{MODEL}: not there; make it with: snakemake --cores 2 results/models/smollm2")
    sys.path.insert(0, str(REPO))
    from distreach import memory
    from distreach.io import atomic_path, package_versions
    from distreach.models import machine

    runs = []
    for run in RUNS:
        done = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--one", json.dumps(run)],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(table({"runs": runs[-1:]}).splitlines()[-1], flush=True)
    res = {"runs": runs, "headroom": memory.HEADROOM, "machine": machine(), "versions": package_versions()}
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    print(summary(res))


if __name__ == "__main__":
    main()
