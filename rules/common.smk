import importlib.util
import os
import sys
from pathlib import Path

from snakemake.utils import validate

# snakemake run from an env without distreach installed: use this checkout's
if importlib.util.find_spec("distreach") is None:
    sys.path.insert(0, workflow.basedir)

from distreach import figreg
from distreach.codeinfo import fingerprint
from distreach.config import check_config
from distreach.errors import DistreachError

SCHEMA = workflow.source_path("../schemas/config.schema.yaml")

try:
    check_config(config, SCHEMA, validate)
except DistreachError as exc:
    # one line, exit status 2, before any job (as the distreach CLI does)
    where = (
        ", ".join(dict.fromkeys(os.path.abspath(f) for f in workflow.configfiles))
        or "config"
    )
    print(f"distreach: error: {where}: {exc}", file=sys.stderr)
    raise SystemExit(2)


FIGURES = config["figures"]


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    experiment=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    family=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    method=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    shard=r"\d+",


def script_code(script):
    """Fingerprint of the distreach modules scripts/<script>.py reaches through its imports
    (followed transitively); as a param, editing any of them reruns the rule."""
    return fingerprint(Path(workflow.basedir) / "scripts" / f"{script}.py")


def model_base(wildcards):
    """The materialised base model a random_init model copies its architecture from."""
    source = config["models"][wildcards.model]["source"]
    if "random_init" in source:
        return f"results/models/{source['random_init']}"
    return []


def model_twin(wildcards):
    """The twin folder a model's local source names when the workflow writes it (config twins)."""
    local = Path(config["models"][wildcards.model]["source"].get("local", ""))
    if local.parent == Path("results/twins") and local.name in config.get("twins", {}):
        return str(local)
    return []


def model_spec(wildcards):
    return config["models"][wildcards.model]


def target_inputs(wildcards):
    """The model folder, and for derived families the target file (and source model) they come from."""
    family = config["targets"][wildcards.family]
    inputs = {"model": f"results/models/{wildcards.model}"}
    if family["kind"] in ("matched", "shuffled"):
        inputs["base"] = f"results/targets/{family['of']}/{wildcards.model}.arrow"
    elif family["kind"] == "pos":
        inputs["base"] = f"results/pos/{wildcards.model}.arrow"
    elif family["kind"] == "migrated":
        inputs["base"] = f"results/targets/{family['of']}/{family['source']}.arrow"
        inputs["source"] = f"results/models/{family['source']}"
    return inputs


def target_settings(wildcards):
    return config["targets"][wildcards.family]


def experiment_spec(wildcards):
    return config["experiments"][wildcards.experiment]


def experiment_targets(wildcards):
    family = config["experiments"][wildcards.experiment]["targets"]
    return f"results/targets/{family}/{wildcards.model}.arrow"


def tuning_settings(wildcards):
    """Tuning settings of a shard: the global ones, the experiment's, then the method's (a rerun trigger)."""
    exp = config["experiments"][wildcards.experiment]
    method = config["methods"].get(wildcards.method, {"method": wildcards.method})
    return {**config["tuning"], **exp.get("tuning", {}), **method}


def tuning_threads(wildcards):
    """CPUs of a tuning job: the model's 'cpus' where set (a cluster), else every core given."""
    return config["models"][wildcards.model].get("cpus") or max(1, workflow.cores or 1)


def tuning_cpus(wildcards, threads):
    """Slurm cpus_per_task of a tuning job: its threads (the profile's default is 1)."""
    return threads


def model_mem_mb(wildcards, attempt):
    """Memory of a job that loads the model (config models.<name>.mem_mb), doubled on a retry."""
    return config["models"][wildcards.model].get("mem_mb", 8000) * attempt


def model_runtime(wildcards, attempt):
    """Minutes of one tuning shard on this model (config models.<name>.runtime), more on a retry
    (a shard that hit its time limit resumes from its checkpoint)."""
    return config["models"][wildcards.model].get("runtime", 60) * attempt


def shard_files(experiment):
    exp = config["experiments"][experiment]
    return [
        f"results/tuning/{experiment}/{model}/{method}/shard-{k}.arrow"
        for model in exp["models"]
        for method in exp["methods"]
        for k in range(exp["shards"])
    ]


def experiment_shards(wildcards):
    return shard_files(wildcards.experiment)


def figure_inputs(wildcards):
    """The files a figure draws from: its experiments' collected tables, or for a figure of
    vocabularies (Fig. 12) its models' POS tables (distreach.figreg)."""
    if wildcards.fig not in FIGURES:
        raise WorkflowError(
            f"{wildcards.fig} is not in the config's figures section (configured: {', '.join(FIGURES)})"
        )
    return figreg.figure_inputs(wildcards.fig, FIGURES[wildcards.fig])


def figure_spec(wildcards):
    return FIGURES[wildcards.fig]


def figure_caption(wildcards):
    """The report caption of a figure (report/figure.rst renders it)."""
    return figreg.FIGURES[wildcards.fig].caption


def all_outputs():
    tables = [f"results/collected/{e}.arrow" for e in config["experiments"]]
    tables += [
        f"results/{stage}/{m}.arrow"
        for stage in ("vocab", "pos")
        for m in config["models"]
    ]
    figures = [
        f"results/figures/{fig}{ext}"
        for fig in FIGURES
        for ext in (".html", ".png", ".svg")
    ]
    return tables + figures + ["results/report/claims.md", "results/report/claims.html"]
