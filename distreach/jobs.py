"""Tuning jobs: which experiments' shards are tuned together in one batch.

A tuning job tunes shard k of one or more experiments and methods on one model, and writes one
table per experiment and method into its folder (:func:`table_path`). A job is known by ``<model>/<job name>/shard-<k>``.
By default each experiment and method has its own jobs, named ``<experiment>@<method>`` (then
``+key=value`` for each of the experiment's own tuning settings). With the config's
``share_jobs: true`` the experiments on a model share their jobs where the engine can tune their
rows in one batch: soft, hybrid and hard prompts whose settings differ only in which positions
are soft (:data:`distreach.methods.ROW_SETTINGS`) share a job named ``tune`` (then ``+key=value`` for each setting
that differs from the config's ``tuning``: ``tune+prefix_len=3``); a gcg job is named by its method
and the experiment's own settings, without ``<experiment>@`` (``gcg``), and experiments whose jobs
get one name share it (an error where their settings differ). One model load and one tail of slowly converging rows per job
instead of one per experiment and method (on a CPU a row-step among few rows costs several times
one among many: ``docs/speed.md``, rows tuned together). The price: asking for one figure tunes
every experiment of its jobs, and editing one experiment reruns its jobs.

Pure functions of the workflow config (after schema defaults); no torch.
"""

from __future__ import annotations

import hashlib
import json
import re

from .errors import DistreachError
from .methods import DEFAULT_METHOD, ROW_METHODS, ROW_SETTINGS


def _value(value) -> str:
    """A setting's value as it appears in a job name: plain if it is a number, bool or simple
    word, else a short digest of its JSON (a list, a string with other characters)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if re.fullmatch(r"-?[A-Za-z0-9_.]+", text):
        return text
    return "h" + hashlib.sha256(text.encode()).hexdigest()[:10]


def job_name(experiment: str, method: str, overrides: dict, shared: bool) -> str:
    """``method`` followed by ``+key=value`` for each of an experiment's own tuning settings,
    after ``<experiment>@`` unless experiments share jobs (``@`` is in no config name, so two
    experiments never share a name by accident)."""
    name = method + "".join(f"+{key}={_value(overrides[key])}" for key in sorted(overrides))
    return name if shared else f"{experiment}@{name}"


def tuning_jobs(config: dict) -> dict[str, dict]:
    """Every tuning job of a config, by ``<model>/<job name>/shard-<k>``: its model and shards
    (experiment, target family, inits, shard k of n, method and effective tuning settings: the
    config's ``tuning``, the experiment's, then the method's entry), in config order."""
    jobs: dict[str, dict] = {}
    shared = bool(config.get("share_jobs", False))
    base = config.get("tuning", {})
    for name, exp in config["experiments"].items():
        overrides = exp.get("tuning", {})
        for model in exp["models"]:
            for method in exp["methods"]:
                entry = config.get("methods", {}).get(method, {"method": method})
                settings = {**base, **overrides, **entry}
                batch = {k: v for k, v in settings.items() if k not in ROW_SETTINGS}  # what a job's shards share
                if shared and settings.get("method", DEFAULT_METHOD) in ROW_METHODS:
                    title = job_name(name, "tune", {k: v for k, v in batch.items() if base.get(k, None) != v}, True)
                else:
                    title, batch = job_name(name, method, overrides, shared), settings
                for k in range(exp["shards"]):
                    key = f"{model}/{title}/shard-{k}"
                    job = jobs.setdefault(key, {"model": model, "batch": batch, "shards": []})
                    if job["batch"] != batch:  # a name shared by accident
                        other = job["shards"][0]["experiment"]
                        raise DistreachError(f"experiments.{name}: its tuning job {key} has the name of experiment "
                                             f"{other}'s, with other settings; rename one of them")
                    job["shards"].append({"experiment": name, "family": exp["targets"], "inits": exp["inits"],
                                          "shard": k, "n_shards": exp["shards"], "method": method, "tuning": settings})
    for job in jobs.values():
        del job["batch"]
    return jobs


def table_path(folder, experiment: str, method: str) -> str:
    """The table of ``experiment``'s rows of ``method`` in a tuning job's folder."""
    return f"{folder}/{experiment}@{method}.arrow"


def experiment_jobs(jobs: dict[str, dict], experiment: str) -> list[str]:
    """The jobs (keys of :func:`tuning_jobs`) that tune a shard of ``experiment``."""
    return [key for key, job in jobs.items() if any(s["experiment"] == experiment for s in job["shards"])]


def experiment_tables(jobs: dict[str, dict], experiment: str, folder) -> list[str]:
    """The tables of ``experiment``'s shards, each in the folder ``folder(key)`` of its job."""
    return [table_path(folder(key), experiment, s["method"])
            for key, job in jobs.items() for s in job["shards"] if s["experiment"] == experiment]


# a job's cluster resources per model where its config entry sets none (the schema's descriptions say them)
MODEL_MEM_MB = 8000  # memory of a job that loads the model, doubled on a retry
MODEL_RUNTIME = 60  # minutes of a tuning job per shard it tunes, times the attempt

MODEL_KINDS = ("lm",)  # target kinds made by the model's own forward passes (its weights)


def target_model(config: dict, family: str, model: str) -> str:
    """The model whose target file of ``family`` a tuning on ``model`` reads. A ``random_init``
    model has its base's tokenizer, so where the family's targets depend on the vocabulary alone
    (every kind but :data:`MODEL_KINDS`, and those matched or shuffled from them) they are its
    base's, made once: the same table, computed from the same |V|, usable tokens and seeds."""
    base = config["models"][model]["source"].get("random_init")
    seen = set()
    while base is not None and family not in seen:
        seen.add(family)
        entry = config["targets"][family]
        kind = entry.get("kind", "vanilla")
        if kind in MODEL_KINDS:
            return model
        if kind not in ("matched", "shuffled"):
            return base
        family = entry["of"]
    return model
