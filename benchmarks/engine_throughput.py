"""The batched engine against a plain one-prompt-at-a-time loop, on the same targets.

The loop is what a careful research script does: one target, one init, a forward with
the logits of the last position only (``logits_to_keep=1``), AdamW, the same
early-stopping rule. Both tune soft prompts from the same inits. Both sides warm up,
then each is timed for at least ``--seconds`` (default 10) per repeat, and the median
of 3 repeats is reported, in prompt-steps per second. The script also checks that
both compute the same loss at the first step (tight tolerance) and reach the same
kl_min (mean over the shared rows within 10%: Adam's first steps are nearly sign
updates, so last-bit differences make single trajectories drift apart).

``matmul_fraction`` is the share of the engine's step time that its matmuls would take
on their own: every linear layer's forward and input-gradient matmul at the step's own
shapes ([B x L, d_in] by [d_in, d_out], and the output layer at [B, d]), in the run's
dtype, timed alone and summed, divided by the measured step time (at most 1 up to noise;
the rest is attention, norms, softmax, AdamW and Python).

    python benchmarks/engine_throughput.py [--quick] [--model results/models/smollm2] [--dtypes fp32 bf16] [--out FILE.json]

By default the script runs the dtype ``dtype: auto`` picks on this machine and then the
other one, except bf16 on a CPU without native bf16 (emulated there, many times slower):
that leg is skipped, and said so (``--dtypes bf16`` forces it). The last line is
``speedup_vs_loop=<x> matmul_fraction=<y> dtype=<d>`` for the first dtype.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from distreach.engine import AUTO_BATCH, TuneConfig, allowed_tokens, init_rows, tune
from distreach.infotheory import kl
from distreach.io import atomic_path, package_versions
from distreach.models import DTYPES, auto_dtype, cpu_has_bf16, load_materialised, machine
from distreach.tokens import resolve_bos


def say(text: str) -> None:
    print(text, flush=True)


def timed(fn, seconds: float) -> float:
    """Median over 3 repeats of work units per second; ``fn()`` does a unit of work and returns
    how many prompt-steps it did; each repeat runs for at least ``seconds``."""
    rates = []
    for _ in range(3):
        done, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            done += fn()
        rates.append(done / elapsed)
    return statistics.median(rates)


def matmul_seconds(model, rows: int, positions: int, dtype: torch.dtype, reps: int = 5) -> float:
    """Seconds one engine step spends in its linear layers' matmuls alone: forward and
    input gradient of every linear layer at [rows x positions, d_in], the output layer at
    [rows, d] (median of ``reps`` timings per shape)."""
    head = model.get_output_embeddings()
    shapes: dict[tuple[int, int, int], int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            n = rows if module is head else rows * positions
            key = (n, module.in_features, module.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    total = 0.0
    for (n, d_in, d_out), count in shapes.items():
        x, w, g = torch.randn(n, d_in, dtype=dtype), torch.randn(d_out, d_in, dtype=dtype), torch.randn(n, d_out, dtype=dtype)
        times = []
        for _ in range(reps + 1):
            t = time.perf_counter()
            torch.nn.functional.linear(x, w)  # forward
            torch.mm(g, w)  # gradient to the inputs (weights are frozen)
            times.append(time.perf_counter() - t)
        total += count * statistics.median(times[1:])
    return total


def plain_loop(lm, p: torch.Tensor, init: torch.Tensor, cfg: TuneConfig) -> tuple[float, int, float]:
    """One row, logits of the last position only: (kl_min, steps, first loss)."""
    model, embed = lm.model, lm.model.get_input_embeddings()
    bos_id = resolve_bos(lm.tokenizer.bos_token_id, cfg.bos, lm.name)  # the engine's policy: the same inputs on both sides
    bos = embed(torch.tensor([[bos_id]])) if bos_id is not None else None
    theta = torch.nn.Parameter(init.clone()[None])
    opt = torch.optim.AdamW([theta], lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, since, steps, first = float("inf"), 0, 0, None
    for _ in range(cfg.max_steps):
        x = theta.to(embed.weight.dtype)
        if bos is not None:
            x = torch.cat([bos, x], 1)
        logq = torch.log_softmax(model(inputs_embeds=x, logits_to_keep=1).logits[:, -1].float(), -1)
        loss = kl(p[None], logq).sum()
        steps += 1
        value = loss.item()
        first = value if first is None else first
        since = 0 if value < best * (1 - cfg.min_delta) else since + 1
        best = min(best, value)
        if since >= cfg.patience:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return best, steps, first


def run(folder: str, dtype: str, rows: int, loop_rows: int, steps: int, seconds: float) -> dict:
    lm = load_materialised(folder, dtype=dtype, device="cpu")[0]
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(rows, lm.vocab_size, generator=g) * 2.5, -1)
    cfg = TuneConfig(max_steps=steps, patience=steps)  # fixed work: every row runs `steps` steps
    seeds = list(range(rows))
    batch = min(rows, AUTO_BATCH["cpu"])
    embed = lm.model.get_input_embeddings()
    soft, _ = init_rows(embed, embed.weight, allowed_tokens(lm.tokenizer, embed.weight.shape[0], cfg), seeds, cfg)

    say(f"  {dtype}: warm-up")
    tune(lm, p[:batch].numpy(), seeds[:batch], TuneConfig(max_steps=2))
    for i in range(2):
        plain_loop(lm, p[i], soft[i], TuneConfig(max_steps=2, patience=2))

    say(f"  {dtype}: engine, {rows} rows x {steps} steps per unit, 3 repeats of >= {seconds:g} s")
    last = {}

    def engine_unit():
        last["res"] = tune(lm, p.numpy(), seeds, cfg)
        return int(last["res"].steps.sum())

    engine_rate = timed(engine_unit, seconds)
    res = last["res"]

    say(f"  {dtype}: plain loop, 3 repeats of >= {seconds:g} s")
    loop = [plain_loop(lm, p[i], soft[i], cfg) for i in range(loop_rows)]  # the rows compared with the engine
    cursor = {"i": 0}

    def loop_unit():
        i = cursor["i"] % rows
        cursor["i"] += 1
        return plain_loop(lm, p[i], soft[i], cfg)[1]

    loop_rate = timed(loop_unit, seconds)

    say(f"  {dtype}: matmuls alone at the step's shapes")
    step_s = batch / engine_rate  # one step of a full batch (every row runs every step)
    fraction = matmul_seconds(lm.model, batch, cfg.prefix_len, DTYPES[dtype]) / step_s

    once = tune(lm, p[:loop_rows].numpy(), seeds[:loop_rows], TuneConfig(max_steps=1))
    first_diff = max(abs(f - k) / k for (_, _, f), k in zip(loop, once.kl_min))
    loop_mean = np.mean([k for k, _, _ in loop])
    diff = abs(loop_mean - res.kl_min[:loop_rows].mean()) / loop_mean
    return {
        "dtype": dtype,
        "batch": batch,
        "engine": engine_rate,
        "loop": loop_rate,
        "speedup": engine_rate / loop_rate,
        "fraction": fraction,
        "kl_rel_diff": diff,
        "first_rel_diff": first_diff,
    }


def table(results: list[dict]) -> str:
    """The markdown table of :func:`run`'s results."""
    lines = ["| dtype | batch | engine prompt-steps/s | loop prompt-steps/s | speedup | matmul share of the step "
             "| first-step loss rel. diff | mean kl_min rel. diff |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['dtype']} | {r['batch']} | {r['engine']:.1f} | {r['loop']:.1f} | {r['speedup']:.1f} "
                     f"| {r['fraction']:.2f} | {r['first_rel_diff']:.1e} | {r['kl_rel_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="results/models/smollm2", help="a materialised model folder")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=["fp32", "bf16"],
                    help="default: the pipeline's dtype auto choice first, then the other where the CPU has it natively")
    ap.add_argument("--quick", action="store_true", help="fewer rows and steps per timed unit: under 3 minutes on 2 cores")
    ap.add_argument("--seconds", type=float, default=10.0, help="minimum time of each timed repeat (default 10)")
    ap.add_argument("--out", type=Path, help="write the results (and the machine, threads and package versions) as JSON here")
    args = ap.parse_args()
    if args.dtypes is None:
        first = auto_dtype("cpu")
        args.dtypes = [first]
        if first == "fp32" and not cpu_has_bf16():
            say("skipping bf16: this CPU has no native bf16 (emulated, many times slower); --dtypes bf16 forces it")
        else:
            args.dtypes.append("fp32" if first == "bf16" else "bf16")
    rows, loop_rows, steps = (64, 3, 8) if args.quick else (64, 8, 40)
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads; legs: {', '.join(args.dtypes)}")
    results = []
    for dtype in args.dtypes:
        results.append(run(args.model, dtype, rows, loop_rows, steps, args.seconds))
    say(f"{rows} rows x {steps} steps per engine unit (auto batch); plain loop over the same rows and inits")
    say(table(results))
    for r in results:
        tight = 1e-4 if r["dtype"] == "fp32" else 2e-2
        if r["first_rel_diff"] > tight or r["kl_rel_diff"] > 0.1:
            raise SystemExit(f"engine and loop disagree in {r['dtype']}: first-step loss {r['first_rel_diff']:.1e}, "
                             f"kl_min {r['kl_rel_diff']:.1e}")
    if args.out:  # only numbers that passed the agreement check
        report = {"machine": machine(), "threads": torch.get_num_threads(), "versions": package_versions(),
                  "model": args.model, "quick": args.quick, "results": results}
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
    first = results[0]
    say(f"speedup_vs_loop={first['speedup']:.2f} matmul_fraction={first['fraction']:.2f} dtype={first['dtype']}")


if __name__ == "__main__":
    main()
