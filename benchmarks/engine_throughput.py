"""The batched engine against a plain one-prompt-at-a-time loop, on the same targets.

The loop is what a straightforward research script does: one target, one init,
a full-sequence forward, AdamW, the same early-stopping rule. Both tune soft
prompts from the same inits; the script reports prompt-steps per second of each,
their ratio, the engine's achieved FLOP/s as a fraction of this machine's fp32
matmul FLOP/s (measured in the same run), and checks that both compute the same
loss (first step, tight tolerance) and reach the same kl_min (mean over the shared
rows within 10%: Adam's first steps are nearly sign updates, so last-bit differences
between a batched and a full-sequence forward make single trajectories drift apart).

    python benchmarks/engine_throughput.py [--quick] [--model results/models/smollm2] [--dtypes fp32 bf16]

The last line is ``speedup_vs_loop=<x> matmul_fraction=<y>`` for the first dtype (by
default the one ``dtype: auto`` picks on this machine).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from distreach.engine import AUTO_BATCH, TuneConfig, tune
from distreach.infotheory import kl
from distreach.models import auto_dtype, load_materialised


def matmul_flops(seconds: float = 3.0, n: int = 2048) -> float:
    """fp32 FLOP/s of a square matmul on this machine (best of repeated runs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def row_step_flops(model, prefix_len: int, bos: bool) -> float:
    """Matmul FLOPs of one row-step: forward over L (+BOS) positions with logits at the
    last one, and a backward to the inputs only (weights are frozen), about as much again."""
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    body = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and p is not emb and p is not out)
    tokens = prefix_len + int(bos)
    forward = 2 * body * tokens + 2 * out.numel()
    return 2 * forward


def plain_loop(lm, p: torch.Tensor, init: torch.Tensor, cfg: TuneConfig) -> tuple[float, int, float]:
    """One row, full-sequence forward: (kl_min, steps, first loss)."""
    model, embed = lm.model, lm.model.get_input_embeddings()
    bos = embed(torch.tensor([[lm.tokenizer.bos_token_id]])) if cfg.bos == "bos" else None
    theta = torch.nn.Parameter(init.clone()[None])
    opt = torch.optim.AdamW([theta], lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, since, steps, first = float("inf"), 0, 0, None
    for _ in range(cfg.max_steps):
        x = theta.to(embed.weight.dtype)
        if bos is not None:
            x = torch.cat([bos, x], 1)
        logq = torch.log_softmax(model(inputs_embeds=x).logits[:, -1].float(), -1)
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


def run(folder: str, dtype: str, rows: int, loop_rows: int, steps: int, peak: float) -> dict:
    lm = load_materialised(folder, dtype=dtype, device="cpu")[0]
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(rows, lm.vocab_size, generator=g) * 2.5, -1)
    cfg = TuneConfig(max_steps=steps, patience=steps)  # fixed work: every row runs `steps` steps
    seeds = list(range(rows))
    tune(lm, p[:2].numpy(), seeds[:2], TuneConfig(max_steps=2))  # warm-up
    t = time.perf_counter()
    res = tune(lm, p.numpy(), seeds, cfg)
    engine_s = time.perf_counter() - t
    engine_rate = res.steps.sum() / engine_s

    from distreach.engine import allowed_tokens, init_rows

    embed = lm.model.get_input_embeddings()
    soft, _ = init_rows(embed, embed.weight, allowed_tokens(lm.tokenizer, embed.weight.shape[0], cfg), seeds[:loop_rows], cfg)
    t = time.perf_counter()
    loop = [plain_loop(lm, p[i], soft[i], cfg) for i in range(loop_rows)]
    loop_s = time.perf_counter() - t
    loop_rate = sum(s for _, s, _ in loop) / loop_s
    once = tune(lm, p[:loop_rows].numpy(), seeds[:loop_rows], TuneConfig(max_steps=1))
    first_diff = max(abs(f - k) / k for (_, _, f), k in zip(loop, once.kl_min))
    loop_mean = np.mean([k for k, _, _ in loop])
    diff = abs(loop_mean - res.kl_min[:loop_rows].mean()) / loop_mean
    achieved = engine_rate * row_step_flops(lm.model, cfg.prefix_len, cfg.bos == "bos")
    return {
        "dtype": dtype,
        "batch": min(rows, AUTO_BATCH["cpu"]),
        "engine": engine_rate,
        "loop": loop_rate,
        "speedup": engine_rate / loop_rate,
        "fraction": achieved / peak,
        "kl_rel_diff": diff,
        "first_rel_diff": first_diff,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="results/models/smollm2", help="a materialised model folder")
    ap.add_argument("--dtypes", nargs="+", default=None, help="default: the pipeline's dtype auto choice first, then the other")
    ap.add_argument("--quick", action="store_true", help="small sizes: under 3 minutes")
    args = ap.parse_args()
    if args.dtypes is None:
        first = auto_dtype("cpu")
        args.dtypes = [first, "fp32" if first == "bf16" else "bf16"]
    rows, loop_rows, steps = (64, 3, 15) if args.quick else (64, 8, 40)
    peak = matmul_flops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{rows} rows x {steps} steps in the engine (auto batch), {loop_rows} rows in the plain loop")
    print("| dtype | batch | engine prompt-steps/s | loop prompt-steps/s | speedup | FLOP/s / fp32 matmul peak | first-step loss rel. diff | mean kl_min rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for dtype in args.dtypes:
        r = run(args.model, dtype, rows, loop_rows, steps, peak)
        results.append(r)
        print(
            f"| {r['dtype']} | {r['batch']} | {r['engine']:.1f} | {r['loop']:.1f} | {r['speedup']:.1f} "
            f"| {r['fraction']:.2f} | {r['first_rel_diff']:.1e} | {r['kl_rel_diff']:.1e} |",
            flush=True,
        )
        tight = 1e-4 if dtype == "fp32" else 2e-2
        if r["first_rel_diff"] > tight or r["kl_rel_diff"] > 0.1:
            raise SystemExit(f"engine and loop disagree: first-step loss {r['first_rel_diff']:.1e}, kl_min {r['kl_rel_diff']:.1e}")
    first = results[0]
    print(f"speedup_vs_loop={first['speedup']:.2f} matmul_fraction={first['fraction']:.2f}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
