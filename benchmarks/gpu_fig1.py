"""The paper's Fig. 1 grid on one GPU, for a model of a paper model's shape with random weights.

A shape of SHAPES has the layer sizes, and so the FLOPs, of the model it is named after, with
no hub needed: llama3.2-1b (hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192,
|V| = 128,256, tied embeddings) or llama3-8b (hidden 4096, 32 layers, 32 heads / 8 KV heads,
MLP 14336, |V| = 128,256, untied). Vanilla targets every 0.05 bits from 0 to log2|V| (--step),
one per level, 5 inits each, up to 500 steps, bf16, soft prompts of length 5, the engine's
automatic batch size. Reports GPU-minutes for the grid, prompt-steps per second and achieved
TFLOP/s (after a warm-up; the timed region is the tuning itself, from the engine's first
forward pass), and draws the curve (needs altair and vl-convert; --no-figure skips it).

    python benchmarks/gpu_fig1.py --out DIR                          # Llama-3.2-1B shape, full grid (GPU)
    python benchmarks/gpu_fig1.py --shape llama3-8b --step 0.5 --out DIR
    python benchmarks/gpu_fig1.py --tiny --out DIR                   # a tiny model on the CPU, to test the script
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from distreach.engine import TuneConfig, tune
from distreach.io import package_versions, write_arrow, write_json
from distreach.models import LoadedModel
from distreach.targets import logprobs
from distreach.vanilla import EntropyGrid, VanillaSettings, vanilla_targets
from distreach.units import to_unit

# name -> (what it stands for, transformers LlamaConfig arguments, default grid step in bits)
SHAPES = {
    "llama3.2-1b": ("Llama-3.2-1B-shaped, random weights", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, head_dim=64, rope_theta=500000.0,
        max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=128000), 0.05),
    "llama3-8b": ("Llama-3-8B-shaped, random weights", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, head_dim=128, rope_theta=500000.0,
        max_position_embeddings=8192, tie_word_embeddings=False, bos_token_id=128000), 0.05),
    "tiny": ("tiny", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=2000, head_dim=16, max_position_embeddings=64,
        tie_word_embeddings=True, bos_token_id=1), 1.0),
}
PAPER_STEP = 0.05  # the paper's Fig. 1 grid, bits


class VocabOnly:
    """What the engine needs of a tokenizer for soft prompts: size, special ids and BOS."""

    def __init__(self, size: int, bos: int):
        self.size, self.bos_token_id, self.all_special_ids = size, bos, [bos]

    def __len__(self) -> int:
        return self.size

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [f"t{i}" for i in ids]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="llama3.2-1b",
                    help="model shape (tiny runs on the CPU); default llama3.2-1b")
    ap.add_argument("--tiny", action="store_true", help="same as --shape tiny (tests the script on the CPU)")
    ap.add_argument("--out", default="benchmarks/out", help="folder for gpu_fig1.{json,arrow,png,html,svg}")
    ap.add_argument("--step", type=float, default=None,
                    help=f"grid step in bits (default: the paper's {PAPER_STEP}; tiny: 1.0)")
    ap.add_argument("--inits", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--no-figure", dest="figure", action="store_false",
                    help="skip the figure (altair and vl-convert not needed)")
    args = ap.parse_args()
    shape_name = "tiny" if args.tiny else args.shape
    what, shape, default_step = SHAPES[shape_name]
    step = default_step if args.step is None else args.step
    if not step > 0 or args.inits < 1 or args.max_steps < 1:
        ap.error(f"--step must be > 0, --inits and --max-steps >= 1 (got {step}, {args.inits}, {args.max_steps})")
    if args.figure:
        from distreach import figures  # altair and vl-convert, checked before any work
    from transformers import LlamaConfig, LlamaForCausalLM

    device = "cuda" if torch.cuda.is_available() and shape_name != "tiny" else "cpu"
    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    with torch.device(device):  # weights made where they run, in their dtype (8B: no fp32 copy on the host)
        model = LlamaForCausalLM._from_config(LlamaConfig(**shape), dtype=dtype)
    model.eval().requires_grad_(False)
    vocab = shape["vocab_size"]
    lm = LoadedModel(f"{shape_name}-shaped-random", model, VocabOnly(vocab, shape["bos_token_id"]), {})

    t = time.perf_counter()
    table = vanilla_targets(vocab, EntropyGrid(step=step, unit="bits"), VanillaSettings(per_level=1))
    targets_s = time.perf_counter() - t
    probs = np.repeat(np.exp(logprobs(table)), args.inits, axis=0)
    seeds = list(range(len(probs)))
    cfg = TuneConfig(max_steps=args.max_steps, bos="bos")
    grid = (f"{table.num_rows} levels every {step:g} bits (the paper: every {PAPER_STEP:g}), "
            f"{args.inits} inits, up to {args.max_steps} steps, {args.dtype}, {what}, {device}")
    print(f"gpu_fig1: {grid}", flush=True)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    tune(lm, probs[:2], seeds[:2], TuneConfig(max_steps=3))  # warm-up (kernels, allocator)
    # the timed region starts at the engine's first forward pass: drawing the inits and other
    # set-up inside tune() are not tuning
    start = {}

    def first_forward(module, args):
        if "t" not in start:
            sync()
            start["t"] = time.perf_counter()

    hook = model.register_forward_pre_hook(first_forward)
    t = time.perf_counter()
    res = tune(lm, probs, seeds, cfg)  # no checkpoint: nothing is hashed or saved
    sync()
    end = time.perf_counter()
    hook.remove()
    setup_s, tune_s = start["t"] - t, end - start["t"]
    if not np.isfinite(np.nanmax(res.kl_min)):
        raise SystemExit("gpu_fig1: kl_min is not finite (an infinite value, or no row tuned); nothing written")

    # matmul FLOPs of one row-step: the body's linear layers over the L prefix positions (the BOS
    # position's keys and values are computed once per run) and the output layer at the last
    # position, forward and backward to the inputs (the weights are frozen: as much again)
    body = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n and "lm_head" not in n)
    flops_per_row_step = 2 * (2 * body * cfg.prefix_len + 2 * vocab * shape["hidden_size"])
    row_steps = int(res.steps.sum())
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "shape": shape_name,
        "model": what,
        "dtype": args.dtype,
        "grid": grid,
        "grid_step_bits": step,
        "inits": args.inits,
        "max_steps": args.max_steps,
        "levels": table.num_rows,
        "rows": len(probs),
        "row_steps": row_steps,
        "targets_seconds": round(targets_s, 1),
        "setup_seconds": setup_s,
        "tuning_seconds": tune_s,
        "gpu_minutes": round(tune_s / 60, 2),
        # the paper's grid (every PAPER_STEP bits) at this run's time per level: an upper bound
        # from a coarser grid, whose fewer rows fill smaller batches
        "paper_grid_levels": len(EntropyGrid(step=PAPER_STEP, unit="bits").levels(vocab)),
        "paper_grid_gpu_minutes": round(tune_s / 60 * len(EntropyGrid(step=PAPER_STEP, unit="bits").levels(vocab))
                                        / table.num_rows, 2),
        "prompt_steps_per_second": row_steps / tune_s,
        "flops_per_row_step": flops_per_row_step,
        "achieved_tflops": row_steps * flops_per_row_step / tune_s / 1e12,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "packages": package_versions(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    req = np.repeat(np.asarray(table.column("requested_entropy")), args.inits)
    df = pl.DataFrame({
        "experiment": "gpu_fig1", "model": lm.name, "method": "soft", "prefix_len": cfg.prefix_len,
        "n_soft": cfg.prefix_len, "target_kind": "vanilla",
        "target_id": np.repeat(np.asarray(table.column("target_id")), args.inits),
        "target_entropy": req, "entropy_unit": "bits", "init_index": np.tile(np.arange(args.inits), table.num_rows), "steps": res.steps,
        "kl_min": to_unit(res.kl_min, "bits"), "q_entropy": to_unit(res.q_entropy, "bits"), "status": res.status,
    })
    write_arrow(df.to_arrow(), out / "gpu_fig1.arrow", {k: v for k, v in report.items() if k != "grid"})
    if args.figure:
        figures.save(figures.fig01(df, {"experiment": "gpu_fig1"}), out / "gpu_fig1")
    write_json(report, out / "gpu_fig1.json")  # last: its presence means the run finished
    print(json.dumps({k: v for k, v in report.items() if k not in ("packages", "grid")}))


if __name__ == "__main__":
    main()
