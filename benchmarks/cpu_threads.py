"""One tuning process with every thread against one process per core: rows tuned per second.

    python benchmarks/cpu_threads.py [--model smollm2] [--batches 1,16,64] [--threads 2] [--dtypes fp32 bf16]
                                     [--out FILE.json]

For each dtype and batch size, the soft-prompt step of the engine (distreach.engine._Batch, prefix 5,
BOS cached, output layer on the last position only) is timed in one process with
``--threads`` torch threads, then in ``--threads`` processes of one thread each, side by side
(as ``snakemake --cores N`` runs N one-thread tuning jobs). Each process warms up for 2 steps;
then the processes time the same 10 s window (they start it together once all are warm, and
end it together). Prints prompt-steps/s (the rows still tuned at each step, per second, summed
over the processes) and the ratio; the last line is ``side_by_side_over_threads=<ratio at the
middle batch size of the first dtype>``; ``--out`` writes the rows, the machine and the package versions as JSON.
Needs the model materialised by the pipeline (results/models/<name>).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker(model: str, dtype: str, threads: int, batch: int, sync: Path) -> None:
    """Time the step of ``batch`` rows with ``threads`` threads; print prompt-steps/s (the rows
    still tuned at each step, per second). After warming up, the worker writes ``ready-<pid>`` in
    ``sync`` and waits for ``go``, which holds the time every worker's window ends."""
    import os

    import torch

    from distreach.engine import TuneConfig, _Batch, init_rows, tuning_context
    from distreach.models import load_materialised

    torch.set_num_threads(threads)
    lm, _ = load_materialised(str(REPO / "results" / "models" / model), dtype=dtype, device="cpu")
    cfg = TuneConfig()
    ctx = tuning_context(lm, cfg)  # the model's output layer made fast, BOS and allowed tokens resolved, as tune() does
    embed = lm.model.get_input_embeddings()
    p = torch.softmax(torch.randn(batch, lm.vocab_size, generator=torch.Generator().manual_seed(0)), -1)
    soft, ids = init_rows(embed, embed.weight, ctx.allowed, list(range(batch)), cfg)
    run = _Batch(ctx, p, soft, ids, cfg, record_curve=False)
    for step in range(2):
        run.step(step)
    (sync / f"ready-{os.getpid()}").touch()
    while not (sync / "go").exists():
        time.sleep(0.01)
    end = float((sync / "go").read_text())
    rows, step, start = 0, 2, time.time()
    while len(run.active) and (time.time() < end or step < 5):
        rows += len(run.active)  # the rows this step computes; a row that stopped costs nothing
        run.step(step)
        step += 1
    print(rows / (time.time() - start))


def measure(model: str, dtype: str, threads: int, batch: int, processes: int) -> float:
    """Prompt-steps/s of ``processes`` workers, summed: their timed windows start together (once
    every one has loaded the model and warmed up) and end at the same time, 10 s later."""
    import tempfile

    with tempfile.TemporaryDirectory() as sync:
        cmd = [sys.executable, __file__, "--worker", "--model", model, "--dtypes", dtype, "--threads", str(threads), "--batches", str(batch),
               "--sync", sync]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(processes)]
        while len(list(Path(sync).glob("ready-*"))) < processes:
            if any(proc.poll() not in (None, 0) for proc in procs):
                break  # a worker failed: reported below
            time.sleep(0.05)
        go = Path(sync) / "go.tmp"
        go.write_text(str(time.time() + 10))
        go.rename(Path(sync) / "go")
        rates = []
        for proc in procs:
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"benchmark worker failed (is results/models/{model} materialised?)")
            rates.append(float(out.strip().splitlines()[-1]))
    return sum(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], help="dtypes to time (default fp32 bf16)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sync", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        worker(args.model, args.dtypes[0], args.threads, batches[0], args.sync)
        return
    rows = []
    for dtype in args.dtypes:
        for batch in batches:
            together = measure(args.model, dtype, args.threads, batch, 1)
            apart = measure(args.model, dtype, 1, batch, args.threads)
            rows.append({"dtype": dtype, "batch": batch, "together": together, "apart": apart})
            print(f"{dtype} batch {batch}: {together:.1f} prompt-steps/s in 1 process, {apart:.1f} side by side", flush=True)
    res = {"model": args.model, "threads": args.threads, "rows": rows, **provenance()}
    print(table(res))
    print(f"side_by_side_over_threads={rows[len(batches) // 2]['apart'] / rows[len(batches) // 2]['together']:.2f}")
    if args.out:
        from distreach.io import atomic_path

        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(res, indent=1) + "\n")


def provenance() -> dict:
    from distreach.io import package_versions
    from distreach.models import machine

    return {"machine": machine(), "versions": package_versions()}


def table(res: dict) -> str:
    """The Markdown table of a results file's rows."""
    n = res["threads"]
    lines = [f"| dtype | batch | s per step, 1 process x {n} threads | prompt-steps/s, 1 process x {n} threads "
             f"| prompt-steps/s, {n} processes x 1 thread | ratio |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['dtype']} | {r['batch']} | {r['batch'] / r['together']:.3f} | {r['together']:.1f} | {r['apart']:.1f} "
                     f"| {r['apart'] / r['together']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
