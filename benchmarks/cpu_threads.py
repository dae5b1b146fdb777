"""One tuning process with every thread against one process per core: rows tuned per second.

    python benchmarks/cpu_threads.py [--model smollm2] [--batches 1,16,64] [--threads 2]

For each batch size, the soft-prompt step of the engine (distreach.engine._Batch, prefix 5,
fp32, BOS cached, output layer on the last position only) is timed in one process with
``--threads`` torch threads, then in ``--threads`` processes of one thread each, side by side
(as ``snakemake --cores N`` runs N one-thread tuning jobs). Each process warms up for 2 steps;
then the processes time the same 10 s window (they start it together once all are warm, and
end it together). Prints prompt-steps/s (the rows still tuned at each step, per second, summed
over the processes) and the ratio; the last line is ``side_by_side_over_threads=<ratio at the
middle batch size>``. Needs the model materialised by the pipeline (results/models/<name>).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker(model: str, threads: int, batch: int, sync: Path) -> None:
    """Time the step of ``batch`` rows with ``threads`` threads; print prompt-steps/s (the rows
    still tuned at each step, per second). After warming up, the worker writes ``ready-<pid>`` in
    ``sync`` and waits for ``go``, which holds the time every worker's window ends."""
    import os

    import torch

    from distreach.engine import TuneConfig, _Batch, init_rows, tuning_context
    from distreach.models import load_materialised

    torch.set_num_threads(threads)
    lm, _ = load_materialised(str(REPO / "results" / "models" / model), dtype="fp32", device="cpu")
    cfg = TuneConfig()
    ctx = tuning_context(lm, cfg)  # the model's output layer made fast, BOS and allowed tokens resolved, as tune() does
    embed = lm.model.get_input_embeddings()
    p = torch.softmax(torch.randn(batch, lm.vocab_size, generator=torch.Generator().manual_seed(0)), -1)
    soft, ids, _ = init_rows(embed, embed.weight, ctx.allowed, list(range(batch)), cfg)
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


def measure(model: str, threads: int, batch: int, processes: int) -> float:
    """Prompt-steps/s of ``processes`` workers, summed: their timed windows start together (once
    every one has loaded the model and warmed up) and end at the same time, 10 s later."""
    import tempfile

    with tempfile.TemporaryDirectory() as sync:
        cmd = [sys.executable, __file__, "--worker", "--model", model, "--threads", str(threads), "--batches", str(batch),
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
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sync", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        worker(args.model, args.threads, batches[0], args.sync)
        return
    n = args.threads
    print(f"| batch | s per step, 1 process x {n} threads | prompt-steps/s, 1 process x {n} threads "
          f"| prompt-steps/s, {n} processes x 1 thread | ratio |")
    print("|---|---|---|---|---|")
    ratios = []
    for batch in batches:
        together = measure(args.model, n, batch, 1)
        apart = measure(args.model, 1, batch, n)
        ratios.append(apart / together)
        print(f"| {batch} | {batch / together:.3f} | {together:.1f} | {apart:.1f} | {apart / together:.2f} |", flush=True)
    print(f"side_by_side_over_threads={ratios[len(ratios) // 2]:.2f}")


if __name__ == "__main__":
    main()
