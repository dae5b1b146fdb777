"""How low a KL each dtype reaches: soft prompts for small word distributions (the README's
capitals target and three like it), tuned from the same inits with the default settings in fp32
and in bf16 on SmolLM2, each row's ``kl_min`` in bits.

bf16 rounds the model's activations and logits to about three significant digits, so a prompt can
steer q only so finely: where fp32 reaches a few thousandths of a bit, bf16 stops higher. The
study's verdicts compare KLs far above that; a user after the smallest KLs sets ``dtype: fp32``.

    python benchmarks/dtype_floor.py [--inits 2] [--out FILE.json]

The model is loaded as ``distreach tune --model smollm2`` loads it (converted once into the
cache). bf16 on a CPU without native bf16 is emulated and slow, but gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from distreach import api
from distreach.engine import TuneConfig, tune
from distreach.io import atomic_path, package_versions
from distreach.models import machine
from distreach.seeds import derive_seed
from distreach.targets import target_probs
from distreach.units import to_unit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gcg import CAPITALS  # noqa: E402  (the README's target, as benchmarks/gcg.py holds it)

TARGETS = {
    "capitals": CAPITALS,
    "colours": {" red": 0.4, " blue": 0.3, " green": 0.2, " yellow": 0.1},
    "numbers": {" one": 0.25, " two": 0.25, " three": 0.25, " four": 0.25},
    "animals": {" cat": 0.6, " dog": 0.3, " horse": 0.1},
}


def probs_of(loaded) -> np.ndarray:
    return np.concatenate([target_probs(api.token_target(dist, loaded, name), loaded.vocab_size)[1]
                           for name, dist in TARGETS.items()])


def run(inits: int) -> dict:
    rows = [(t, i) for t in TARGETS for i in range(inits)]
    seeds = [derive_seed(0, "init", t, i) for t, i in rows]
    kls = {}
    for dtype in ("fp32", "bf16"):
        torch.manual_seed(0)
        lm = api.load_model("smollm2", dtype=dtype, device="cpu")
        probs = probs_of(lm)[[list(TARGETS).index(t) for t, _ in rows]]
        kls[dtype] = to_unit(tune(lm, probs, seeds, TuneConfig()).kl_min, "bits").tolist()
    return {"model": "smollm2", "inits": inits,
            "rows": [{"target": t, "init": i, "fp32_bits": kls["fp32"][k], "bf16_bits": kls["bf16"][k]}
                     for k, (t, i) in enumerate(rows)]}


def table(res: dict) -> str:
    lines = ["| target | init | kl_min fp32 (bits) | kl_min bf16 (bits) | bf16 / fp32 |", "|---|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['init']} | {r['fp32_bits']:.4f} | {r['bf16_bits']:.4f} | "
              f"{r['bf16_bits'] / r['fp32_bits']:.1f} |" for r in res["rows"]]
    return "\n".join(lines)


def summary(res: dict) -> str:
    ratio = [r["bf16_bits"] / r["fp32_bits"] for r in res["rows"]]
    m = res["machine"]
    return (f"bf16 ends higher in {sum(x > 1 for x in ratio)} of {len(ratio)} rows, median bf16/fp32 "
            f"{float(np.median(ratio)):.1f}; median kl_min fp32 {float(np.median([r['fp32_bits'] for r in res['rows']])):.4f} "
            f"bits, bf16 {float(np.median([r['bf16_bits'] for r in res['rows']])):.4f} bits. Measured on {m['cpu']}, "
            f"{m['cores']} cores, {'with' if m['native_bf16'] else 'without'} native bf16, {res['threads']} torch threads.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inits", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the rows (and the machine, threads and package versions) as JSON here")
    args = ap.parse_args()
    res = {**run(args.inits), "machine": machine(), "threads": torch.get_num_threads(), "versions": package_versions()}
    print(table(res))
    print(summary(res))
    if args.out:
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
