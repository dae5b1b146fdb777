"""Tuning steps with and without distreach.models.reuse_freed_memory: seconds per step and memory.

    python benchmarks/cpu_malloc.py [--models smollm2 gemma3] [--rows 64] [--steps 12] [--pairs 2]
                                    [--out FILE.json]

Each run is a new process with one torch thread (as a pipeline job), fp32: it loads the model,
calls ``reuse_freed_memory()`` or not, and takes ``--steps`` engine steps of ``--rows`` soft
prompts (prefix 5, BOS cached; random targets, no row stops) after 2 warm-up steps; it reports
the median seconds per timed step and its peak resident memory. Per model the runs alternate
plain, reuse, reuse, plain, ... (``--pairs`` of each), so a steady drift of the machine cancels.
The last line is ``reuse_over_plain=<step-time ratio of the last model>``; ``--out`` writes the
runs, the machine and the package versions as JSON. Needs the models materialised by the
pipeline (results/models/<name>).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def median_step_seconds(lm, rows: int, steps: int, seed: int = 0) -> float:
    """The median seconds of ``steps`` engine steps of ``rows`` soft prompts (prefix 5, BOS cached)
    on random targets drawn with ``seed``, no row stopping, after 2 warm-up steps, on the loaded
    model ``lm`` (also used by batch_rows.py)."""
    import torch

    from distreach.engine import TuneConfig, _Batch, init_rows, tuning_context

    cfg = TuneConfig(patience=10**6)
    ctx = tuning_context(lm, cfg)
    embed = lm.model.get_input_embeddings()
    p = torch.softmax(3 * torch.randn(rows, lm.vocab_size, generator=torch.Generator().manual_seed(seed)), -1)
    soft, ids = init_rows(embed, embed.weight, ctx.allowed, list(range(rows)), cfg)
    run = _Batch(ctx, p, soft, ids, cfg, record_curve=False)
    times = []
    for step in range(steps + 2):
        t0 = time.perf_counter()
        run.step(step)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def worker(model: str, reuse: bool, rows: int, steps: int) -> None:
    import resource

    import torch

    from distreach.models import load_materialised, reuse_freed_memory

    torch.set_num_threads(1)
    if reuse and not reuse_freed_memory():
        sys.exit("reuse_freed_memory did not apply here (glibc only)")
    lm, _ = load_materialised(str(REPO / "results" / "models" / model), dtype="fp32", device="cpu")
    print(json.dumps({"step_seconds": median_step_seconds(lm, rows, steps),
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def table(models: list[dict]) -> str:
    lines = ["| model | rows | s per step, plain | s per step, reuse | reuse / plain | peak memory, plain (MB) | peak memory, reuse (MB) |",
             "|---|---|---|---|---|---|---|"]
    for m in models:
        lines.append(f"| {m['model']} | {m['rows']} | {m['plain']:.3f} | {m['reuse']:.3f} | {m['ratio']:.2f} | "
                     f"{m['plain_rss_mb']:.0f} | {m['reuse_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "REUSE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1] == "reuse", args.rows, args.steps)
        return
    from distreach.io import atomic_path, package_versions
    from distreach.models import machine

    if args.pairs < 1 or args.steps < 1 or args.rows < 1:
        sys.exit("--pairs, --steps and --rows must be at least 1")
    if missing := [m for m in args.models if not (REPO / "results" / "models" / m).is_dir()]:
        sys.exit(f"results/models/{missing[0]}: not materialised (snakemake --cores 2 results/models/{missing[0]})")
    t0 = time.time()
    models = []
    for model in args.models:
        runs = []
        for kind in ["plain", "reuse", "reuse", "plain"] * args.pairs:
            if sum(r["kind"] == kind for r in runs) == args.pairs:
                continue
            proc = subprocess.run([sys.executable, __file__, "--worker", model, kind, "--rows", str(args.rows),
                                   "--steps", str(args.steps)], capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{model} {kind} run failed:\n{proc.stderr}")
            runs.append({"kind": kind, **json.loads(proc.stdout.strip().splitlines()[-1])})
            print(f"  {model} {kind}: {runs[-1]['step_seconds']:.3f} s per step, {runs[-1]['max_rss_mb']:.0f} MB", flush=True)
        mean = {k: statistics.mean(r["step_seconds"] for r in runs if r["kind"] == k) for k in ("plain", "reuse")}
        models.append({"model": model, "rows": args.rows, "runs": runs, **mean, "ratio": mean["reuse"] / mean["plain"],
                       **{f"{k}_rss_mb": max(r["max_rss_mb"] for r in runs if r["kind"] == k) for k in ("plain", "reuse")}})
    print(table(models))
    print(f"reuse_over_plain={models[-1]['ratio']:.3f}")
    if args.out:
        result = {"machine": machine(), "versions": package_versions(), "steps": args.steps, "pairs": args.pairs,
                  "seconds": round(time.time() - t0), "models": models}
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
