"""fp32 against bf16 on this machine's CPU for the materialised default models.

For each model: prompt-steps per second of the batched soft-prompt engine in both
dtypes (same targets, same inits, a fixed number of steps), and the mean KL between
the two dtypes' next-token distributions on random-token prompts.

    python benchmarks/cpu_dtype.py [--models smollm2 gemma3] [--batch 32] [--steps 10] [--out FILE.json]

Needs the models materialised by the pipeline (results/models/<name>). Each rate is one timed
call of ``steps`` steps (the tuning's setup included), so a few steps weigh the setup more.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from distreach.engine import TuneConfig, tune
from distreach.infotheory import kl
from distreach.io import atomic_path, package_versions
from distreach.models import load_materialised, machine


def steps_per_second(lm, batch: int, steps: int) -> float:
    p = torch.softmax(torch.randn(batch, lm.vocab_size, generator=torch.Generator().manual_seed(0)) * 3, -1)
    cfg = TuneConfig(max_steps=steps, patience=steps + 1)
    tune(lm, p.numpy(), list(range(batch)), TuneConfig(max_steps=1))  # warm-up
    t = time.perf_counter()
    res = tune(lm, p.numpy(), list(range(batch)), cfg)
    return float(res.steps.sum()) / (time.perf_counter() - t)


def dtype_kl(folder: str, prompts: int = 16, length: int = 12) -> float:
    a = load_materialised(folder, dtype="fp32", device="cpu")[0]
    b = load_materialised(folder, dtype="bf16", device="cpu")[0]
    ids = torch.randint(0, a.vocab_size, (prompts, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        la = a.model(ids, logits_to_keep=1).logits[:, -1].float().log_softmax(-1)
        lb = b.model(ids, logits_to_keep=1).logits[:, -1].float().log_softmax(-1)
    return float(kl(la.exp(), lb).mean())


def table(rows: list[dict]) -> str:
    """The markdown table of the measured rows."""
    lines = ["| model | fp32 prompt-steps/s | bf16 prompt-steps/s | bf16/fp32 | mean KL(fp32 ‖ bf16), nats |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['fp32']:.1f} | {r['bf16']:.1f} | {r['bf16'] / r['fp32']:.2f} | {r['kl']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", type=Path, help="write the rows (and the machine, threads and package versions) as JSON here")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.steps} steps", flush=True)
    rows = []
    for name in args.models:
        folder = f"results/models/{name}"
        rates = {}
        for dtype in ("fp32", "bf16"):
            lm = load_materialised(folder, dtype=dtype, device="cpu")[0]
            rates[dtype] = steps_per_second(lm, args.batch, args.steps)
            del lm
        rows.append({"model": name, **rates, "kl": dtype_kl(folder)})
    print(table(rows))
    if args.out:
        report = {"machine": machine(), "threads": torch.get_num_threads(), "versions": package_versions(),
                  "batch": args.batch, "steps": args.steps, "rows": rows}
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
