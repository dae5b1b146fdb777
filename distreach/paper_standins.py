"""The paper study on stand-ins: configs/paper-stand-ins.yaml is configs/paper.yaml with every hub
model replaced by a stand-in of :mod:`distreach.standins` and tiny counts
(scripts/paper_standins.py writes it)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from .errors import DistreachError
from .io import atomic_path
from .standins import ARCHITECTURES


# a hub model id (lower case) -> its stand-in's architecture; the first pattern found in the id wins
HUB_STAND_INS = (
    ("gpt2", "gpt2"),
    ("llama-3", "llama3"),
    ("llama3", "llama3"),
    ("falcon", "falcon"),
    ("qwen2", "qwen2"),
    ("gemma-3", "gemma3"),
)

# tiny counts: every experiment, figure and claim of the paper config, a few rows each
TINY_TARGETS = {
    "vanilla": {"grid": {"start": 0, "step": 3.0}, "per_level": 1},
    "outlier": {"grid": {"start": 4, "step": 2.0, "stop": 6}, "ks": [1, 2], "per_level": 1},
    "outlier-vanilla": {"grid": {"start": 4, "step": 2.0, "stop": 6}, "per_level": 1},
    "lm": {"n": 3, "prompt_len": 4},
    "shuffled": {"copies": 1},
    "pos": {"n_tokens": 3, "draws": 2},
}
TINY_TUNING = {"max_steps": 4, "patience": 2}
TINY_MODEL = {"mem_mb": 2000, "runtime": 10, "cpus": 1}


def stand_in_arch(hub_id: str) -> str:
    """The stand-in architecture of a hub model id (e.g. Qwen/Qwen2.5-0.5B-Instruct -> qwen2-instruct)."""
    low = hub_id.lower()
    for pattern, arch in HUB_STAND_INS:
        if pattern in low.replace("qwen2.5", "qwen2"):
            if "instruct" in low and f"{arch}-instruct" in ARCHITECTURES:
                return f"{arch}-instruct"
            return arch
    raise DistreachError(f"no stand-in architecture for hub model {hub_id!r} (known: {', '.join(p for p, _ in HUB_STAND_INS)})")


def stand_ins_config(paper: dict) -> dict:
    """The paper config with every hub model replaced by a stand-in (one seed per model, so two
    models of one architecture differ) and tiny counts; experiments, figures and claims kept."""
    cfg = copy.deepcopy(paper)
    cfg["dtype"] = "fp32"
    cfg["share_jobs"] = True  # a few rows per experiment: one tuning job per model and setting
    for i, (name, entry) in enumerate(paper["models"].items()):
        model = {**entry, **TINY_MODEL}
        if "hf" in entry["source"]:
            model["source"] = {"stand_in": stand_in_arch(entry["source"]["hf"]), "seed": i}
        cfg["models"][name] = model
    for name, fam in cfg["targets"].items():
        kind = fam.get("kind", "vanilla")
        key = name if name in TINY_TARGETS else kind
        fam.update(copy.deepcopy(TINY_TARGETS.get(key, {})))
    cfg["tuning"].update(TINY_TUNING)
    for exp in cfg["experiments"].values():
        exp["inits"] = 1
        exp["shards"] = 1
        if "tuning" in exp:  # an experiment's own step budget gives way to the tiny one
            exp["tuning"] = {k: v for k, v in exp["tuning"].items() if k not in TINY_TUNING}
    # the paper's tagger (scispacy en_core_sci_sm) is not on PyPI; the default tagger stands in
    cfg["pos"] = {"min_pos_prob": 0.5}
    return cfg


def write_stand_ins_config(paper_path, out_path) -> dict:
    """configs/paper-stand-ins.yaml from configs/paper.yaml (atomically); returns the config."""
    paper = yaml.safe_load(Path(paper_path).read_text())
    cfg = stand_ins_config(paper)
    head = (
        f"# GENERATED from {paper_path} by scripts/paper_standins.py; do not edit by hand.\n"
        "# The paper study on stand-ins of its models (distreach.standins): same experiments,\n"
        "# figures and claims, tiny counts, no hub. Runs on the CPU or the local Slurm:\n"
        "#   snakemake --profile slurm --configfile configs/paper-stand-ins.yaml\n"
    )
    with atomic_path(out_path) as tmp:
        Path(tmp).write_text(head + yaml.safe_dump(cfg, sort_keys=False, width=110))
    return cfg
