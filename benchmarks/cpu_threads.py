"""One tuning process with every thread against one process per core: rows tuned per second.

    python benchmarks/cpu_threads.py [--model smollm2] [--batches 1,16,64] [--threads 2]

For each batch size, the soft-prompt step of the engine (distreach.engine._Batch, prefix 5,
fp32, BOS cached, output layer on the last position only) is timed in one process with
``--threads`` torch threads, then in ``--threads`` processes of one thread each, side by side
(as ``snakemake --cores N`` runs N one-thread tuning jobs). Each process warms up for 2 steps
and times at least 10 s of steps. Prints prompt-steps/s (rows x steps per second, summed over
the processes) and the ratio; the last line is ``side_by_side_over_threads=<ratio at the
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


def worker(model: str, threads: int, batch: int) -> None:
    """Time the step of ``batch`` rows with ``threads`` threads; print prompt-steps/s."""
    import torch

    from distreach.engine import TuneConfig, _Batch, _bos_cache, allowed_tokens, fast_last_logits, init_rows
    from distreach.models import load_materialised

    torch.set_num_threads(threads)
    lm, _ = load_materialised(str(REPO / "results" / "models" / model), dtype="fp32", device="cpu")
    fast_last_logits(lm.model)
    cfg = TuneConfig()
    embed = lm.model.get_input_embeddings()
    allowed = allowed_tokens(lm.tokenizer, embed.weight.shape[0], cfg)
    p = torch.softmax(torch.randn(batch, lm.vocab_size, generator=torch.Generator().manual_seed(0)), -1)
    soft, ids, _ = init_rows(embed, embed.weight, allowed, list(range(batch)), cfg)
    run = _Batch(lm.model, p, soft, ids, _bos_cache(lm, cfg), allowed, cfg, record_curve=False)
    for step in range(2):
        run.step(step)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 10 or steps < 3:
        run.step(2 + steps)
        steps += 1
    print(batch * steps / (time.perf_counter() - start))


def measure(model: str, threads: int, batch: int, processes: int) -> float:
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--threads", str(threads), "--batches", str(batch)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(processes)]
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
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        worker(args.model, args.threads, batches[0])
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
