"""Snakemake entry point: Fig. 3's distributions on one model (distreach.nexttoken.write_shapes)."""

import _repo  # first: this checkout's distreach under --sdm conda

import torch

from distreach.nexttoken import write_shapes

with _repo.step_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    spec = snakemake.params.spec
    table = write_shapes(
        snakemake.input.model,
        snakemake.output[0],
        text=spec["text"],
        unit=snakemake.params.unit,
        seed=snakemake.params.seed,
        tuning=snakemake.params.tuning,
        tune=spec["tune"],
        inits=spec["inits"],
        top=spec["top"],
        dtype=snakemake.params.dtype,
        device=snakemake.params.device,
    )
    for name, h, kl in zip(*(table.column(c).to_pylist() for c in ("name", "entropy", "kl"))):
        print(f"{name}: entropy {h:.4f} {snakemake.params.unit}" + (f", KL from the target {kl:.4f}" if kl is not None else ""))
