"""What a tuning step costs per row, by the rows tuned together: seconds per step and per row-step.

    python benchmarks/batch_rows.py [--models smollm2 gemma3] [--rows 1 4 10 32 64 128] [--steps 6]
                                    [--passes 2] [--out FILE.json]

One process per model with one torch thread (as a pipeline job on 2 cores), fp32, with freed
memory kept for reuse where :func:`distreach.models.reuse_freed_memory` applies (as the jobs run;
the JSON says whether it did): for each ``--rows``, engine steps of that many soft prompts (prefix
5, BOS cached; random targets, no row stops), 2 warm-up steps then ``--steps`` timed, the median
taken. ``--passes`` go over the row counts in alternating order (ascending, descending, ...), so a
drift of the machine during a pass does not fall on the small or the large batches alone; a row
count's time is the mean over passes. ``--out`` writes the numbers, each pass's, the machine and
the package versions as JSON; the last line is ``small_over_full=<row-step time at the fewest
rows over that at the most, last model>``. Needs the models materialised by the pipeline
(results/models/<name>).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def step_seconds(model: str, rows: list[int], steps: int, passes: int) -> list[dict]:
    """Per row count: the mean over ``passes`` of the median seconds of ``steps`` steps (after 2
    warm-up steps), the passes going over ``rows`` in alternating order."""
    from distreach.models import load_materialised

    from benchmarks.cpu_malloc import median_step_seconds

    lm, _ = load_materialised(str(REPO / "results" / "models" / model), dtype="fp32", device="cpu")
    seen = {n: [] for n in rows}
    for k in range(passes):
        for n in rows if k % 2 == 0 else rows[::-1]:
            seen[n].append(median_step_seconds(lm, n, steps, seed=n))
            print(f"  {model}, pass {k + 1}, {n} rows: {seen[n][-1]:.3f} s per step", flush=True)
    return runs(seen)


def runs(seen: dict[int, list[float]]) -> list[dict]:
    """Per row count (ascending), from each pass's seconds per step: their mean, and per row-step in ms."""
    means = {n: statistics.mean(seen[n]) for n in sorted(seen)}
    return [{"rows": n, "step_seconds": s, "row_step_ms": 1000 * s / n, "passes": seen[n]} for n, s in means.items()]


def table(models: list[dict]) -> str:
    """Markdown: per model and rows, seconds per step, ms per row-step and that over the most rows'."""
    lines = ["| model | rows | s per step | ms per row-step | row-step time / the most rows' |", "|---|---|---|---|---|"]
    for m in models:
        full = m["runs"][-1]["row_step_ms"]
        for r in m["runs"]:
            lines.append(f"| {m['model']} | {r['rows']} | {r['step_seconds']:.3f} | {r['row_step_ms']:.1f} | "
                         f"{r['row_step_ms'] / full:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 4, 10, 32, 64, 128])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.passes < 1 or min(args.rows) < 1:
        sys.exit("--steps, --passes and every --rows must be at least 1")
    if missing := [m for m in args.models if not (REPO / "results" / "models" / m).is_dir()]:
        sys.exit(f"results/models/{missing[0]}: not materialised (snakemake --cores 2 results/models/{missing[0]})")
    import torch

    from distreach.io import atomic_path, package_versions
    from distreach.models import machine, reuse_freed_memory

    torch.set_num_threads(1)
    reused = reuse_freed_memory()
    t0 = time.time()
    rows = sorted(set(args.rows))
    models = [{"model": m, "runs": step_seconds(m, rows, args.steps, args.passes)} for m in args.models]
    print(table(models))
    last = models[-1]["runs"]
    print(f"small_over_full={last[0]['row_step_ms'] / last[-1]['row_step_ms']:.2f}")
    if args.out:
        result = {"machine": machine(), "versions": package_versions(), "dtype": "fp32", "threads": 1,
                  "reuse_freed_memory": reused, "steps": args.steps, "passes": args.passes,
                  "seconds": round(time.time() - t0), "models": models}
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
