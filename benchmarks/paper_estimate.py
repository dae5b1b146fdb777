"""Size of the paper study (configs/paper.yaml): (target, init) rows per experiment and model,
and an ESTIMATE of its tuning compute from FLOPs (nothing is run or loaded).

    python benchmarks/paper_estimate.py [configs/paper.yaml]

Rows come from the config's counts and each model's |V| (the tokenizer's tokens). Compute: a
prompt-step is one forward and one backward pass over the L prompt positions plus BOS; with
frozen weights the backward pass to the inputs costs about one forward, so 4 x parameters x
tokens FLOPs, taken as 6 x parameters x tokens to be on the safe side; every row is counted at
the maximum of 500 steps (early stopping only lowers it). Hard and hybrid rows add the
[B, d] x [d, |V|] token scores per step, included; gcg rows add a forward pass per candidate
prompt (2 x parameters x tokens each, the GPU default of distreach.gcg.AUTO_WIDTH per step). Parameter counts and |V| are the hub models'
published ones (below); a stand-in or random-init copy counts as its base.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distreach.gcg import AUTO_WIDTH  # noqa: E402
from distreach.vanilla import EntropyGrid  # noqa: E402

GCG_WIDTH = AUTO_WIDTH["cuda"]  # candidate prompts per gcg step on a GPU

# hub model -> (parameters, |V| = tokenizer tokens, hidden size), from the models' config files
HUB = {
    "openai-community/gpt2": (124e6, 50257, 768),
    "meta-llama/Llama-3.2-1B": (1.24e9, 128256, 2048),
    "meta-llama/Llama-3.2-1B-Instruct": (1.24e9, 128256, 2048),
    "tiiuae/falcon-7b": (7.22e9, 65024, 4544),
    "meta-llama/Meta-Llama-3-8B": (8.03e9, 128256, 4096),
    "Qwen/Qwen2.5-0.5B": (0.49e9, 151665, 896),
    "Qwen/Qwen2.5-0.5B-Instruct": (0.49e9, 151665, 896),
    "Qwen/Qwen2.5-1.5B": (1.54e9, 151665, 1536),
    "Qwen/Qwen2.5-1.5B-Instruct": (1.54e9, 151665, 1536),
}


def model_sizes(cfg: dict) -> dict:
    out = {}
    for name, entry in cfg["models"].items():
        src = entry["source"]
        while "random_init" in src:
            src = cfg["models"][src["random_init"]]["source"]
        out[name] = HUB[src["hf"]]
    return out


def n_targets(cfg: dict, family: str, vocab: int) -> int:
    fam = cfg["targets"][family]
    kind = fam.get("kind", "vanilla")
    unit = cfg.get("entropy_unit", "bits")
    if kind in ("vanilla", "outlier"):
        levels = len(EntropyGrid(unit=unit, **fam.get("grid", {})).levels(vocab))
        return levels * fam.get("per_level", 5) * (len(fam.get("ks", [1, 5, 10])) if kind == "outlier" else 1)
    if kind == "lm":
        return fam.get("n", 100)
    if kind == "pos":
        return len(fam.get("tags", [0, 0, 0, 0])) * fam.get("draws", 100)
    base = n_targets(cfg, fam["of"], vocab)
    return base * fam.get("copies", 5) if kind == "shuffled" else base


def main(path="configs/paper.yaml"):
    cfg = yaml.safe_load(Path(path).read_text())
    sizes = model_sizes(cfg)
    tuning = cfg.get("tuning", {})
    total_rows = total_flops = gcg_flops = 0.0
    print("| experiment | models x methods | targets per model | inits | rows |")
    print("|---|---|---|---|---|")
    for name, exp in cfg["experiments"].items():
        methods = exp.get("methods", ["soft"])
        L = exp.get("tuning", {}).get("prefix_len", tuning.get("prefix_len", 5))
        steps = exp.get("tuning", {}).get("max_steps", tuning.get("max_steps", 500))
        rows = 0
        for m in exp["models"]:
            params, vocab, d = sizes[m]
            t = n_targets(cfg, exp["targets"], vocab)
            for method in methods:
                r = t * exp["inits"]
                rows += r
                per_step = 6 * params * (L + 1)
                if method != "soft":
                    per_step += 2 * d * vocab
                if method == "gcg":  # each candidate prompt: a forward pass (2 x parameters x tokens)
                    per_step += 2 * params * (L + 1) * GCG_WIDTH
                    gcg_flops += r * steps * per_step
                total_flops += r * steps * per_step
        total_rows += rows
        counts = sorted({n_targets(cfg, exp["targets"], sizes[m][1]) for m in exp["models"]})
        print(f"| {name} | {len(exp['models'])} x {len(methods)} | {'-'.join(map(str, counts))} | {exp['inits']} | {rows:,} |")
    print(f"\nrows: {total_rows:,.0f}")
    print(f"tuning FLOPs (estimate, every row at max_steps): {total_flops:.2e}, {gcg_flops / total_flops:.0%} of them gcg rows'")
    for tflops in (200, 20):
        print(f"  = {total_flops / (tflops * 1e12) / 3600:,.1f} GPU-hours at a sustained {tflops} TFLOP/s")
    return {"rows": int(total_rows), "flops": total_flops, "gcg_flops": gcg_flops}


if __name__ == "__main__":
    main(*sys.argv[1:])
