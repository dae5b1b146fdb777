import importlib.metadata
import os
import shutil
import sys
from pathlib import Path

from snakemake.utils import validate

# Snakemake puts the Snakefile's folder on sys.path: this checkout's distreach is importable
from distreach import figureregistry, jobs
from distreach.codeinfo import fingerprint
from distreach.figurefiles import CLAIMS_REPORT, FIGURE, FIGURE_FILES
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
    if workflow.config_settings.config:  # the key may be set there, not in the files
        where += f" with --config {' '.join(workflow.config_settings.config)}"
    print(f"distreach: error: {where}: {exc}", file=sys.stderr)
    raise SystemExit(2)


FIGURES = config["figures"]
# models, vocabularies, POS tables and targets before any tuning: a tuning job shared by
# several experiments needs
# many of them, and should start early rather than last
PREP_PRIORITY = 100
TUNING_JOBS = jobs.tuning_jobs(config)


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    experiment=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    family=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    method=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    job=r"[A-Za-z0-9][A-Za-z0-9_.=+@-]*",
    shard=r"\d+",


def script_code(script):
    """Fingerprint of the distreach modules scripts/<script>.py reaches through its imports
    (followed transitively); as a param, editing any of them reruns the rule."""
    return fingerprint(Path(workflow.basedir) / "scripts" / f"{script}.py")


# the JavaScript of the offline HTML pages (rule vega_bundle), read by the jobs that draw a figure
VEGA_BUNDLE = "results/figures/lib/vega-embed.js"


def installed_versions(*packages):
    """The installed version of each package in Snakemake's own environment (None where it is not
    installed there): as a param, a rule whose output depends on them reruns when they change in
    the .venv. Under --sdm conda the rule's env is another one, whose changes rerun it anyway; a
    change in Snakemake's environment then reruns it too, needlessly."""
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def configured(section, name):
    """The config's entry of a name a requested path holds (results/models/<model>,
    results/targets/<family>/..., results/collected/<experiment>.arrow, ...); a name the section
    lacks is refused naming those it has (an input function's error, which Snakemake shows).
    """
    if name not in config[section]:
        raise DistreachError(
            f"{name!r} is not in the config's {section} section (configured: {', '.join(config[section]) or 'none'})"
        )
    return config[section][name]


def model_folder(model):
    """A model's materialised folder (the materialise_model rule's output)."""
    return expand(rules.materialise_model.output.model, model=model)[0]


def vocab_file(model):
    """A model's vocabulary table (the materialise_model rule's output)."""
    return expand(rules.materialise_model.output.vocab, model=model)[0]


def model_base(wildcards):
    """The materialised base model a random_init model copies its architecture from."""
    source = configured("models", wildcards.model)["source"]
    if "random_init" in source:
        return model_folder(source["random_init"])
    return []


# the files of a model folder that loading it reads: config, weights, tokenizer, remote code
MODEL_FILE_SUFFIXES = (
    ".json",
    ".safetensors",
    ".txt",
    ".model",
    ".py",
    ".jinja",
    ".tiktoken",
)


def model_source_files(wildcards):
    """The files a model's local folder (those of MODEL_FILE_SUFFIXES, no hidden ones) or
    gguf_file source holds: as inputs, replacing them writes the model again, and reruns what
    reads it."""
    source = configured("models", wildcards.model)["source"]
    if "gguf_file" in source:
        return [os.path.expanduser(source["gguf_file"])]
    if "local" in source:
        folder = Path(source["local"]).expanduser()
        return sorted(
            str(p)
            for p in folder.iterdir()
            if p.is_file()
            and not p.name.startswith(".")
            and p.suffix in MODEL_FILE_SUFFIXES
        )
    return []


def model_spec(wildcards):
    return configured("models", wildcards.model)


def target_inputs(wildcards):
    """The model folder, its vocabulary table where the family needs token texts or usable
    tokens, and for derived families the target file (and source model) they come from.
    """
    family = configured("targets", wildcards.family)
    configured("models", wildcards.model)  # before target_file looks the model up
    inputs = {"model": model_folder(wildcards.model)}
    # token texts or usable tokens (and no tokenizer loaded)
    if family["kind"] in ("lm", "outlier", "pos", "migrated"):
        inputs["vocab"] = vocab_file(wildcards.model)
    if family["kind"] in ("matched", "shuffled"):
        inputs["base"] = target_file(family["of"], wildcards.model)
    elif family["kind"] == "pos":
        inputs["base"] = FIGURE_FILES["pos"].format(wildcards.model)
    elif family["kind"] == "migrated":
        inputs["base"] = target_file(family["of"], family["source"])
        inputs["source"] = model_folder(family["source"])
        inputs["source_vocab"] = vocab_file(family["source"])
    return inputs


def target_file(family, model):
    """The target file of a family that a tuning on a model reads: the model's own, or for a
    random_init model its base's where the targets depend on the vocabulary alone
    (distreach.jobs.target_model)."""
    return expand(
        rules.targets.output[0],
        family=family,
        model=jobs.target_model(config, family, model),
    )[0]


def target_settings(wildcards):
    return configured("targets", wildcards.family)


def job_folder(key):
    """The folder a tuning job (key ``<model>/<job name>/shard-<k>``, distreach.jobs) writes."""
    return f"results/tuning/{key}"


def tuning_job(wildcards):
    """The tuning job of a job folder (distreach.jobs): its model and shards (each with its
    experiment, method and settings)."""
    key = f"{wildcards.model}/{wildcards.job}/shard-{wildcards.shard}"
    if key not in TUNING_JOBS:
        raise WorkflowError(
            f"no experiment of the config is tuned in {job_folder(key)}"
        )
    return TUNING_JOBS[key]


def tuning_priority(wildcards):
    """Jobs that tune more shards first, so the longest tuning job does not end up running
    alone at the end (the preparing rules come first of all: PREP_PRIORITY)."""
    return len(tuning_job(wildcards)["shards"])


def tuning_targets(wildcards):
    """The target file of each experiment a tuning job tunes, in the order of its shards."""
    return [
        target_file(m["family"], wildcards.model)
        for m in tuning_job(wildcards)["shards"]
    ]


def tunes_on_gpu():
    """Whether tuning jobs run on a GPU here: config device cuda, or auto with an NVIDIA driver."""
    device = config.get("device", "auto")
    return device.startswith("cuda") or (
        device == "auto" and shutil.which("nvidia-smi") is not None
    )


def tuning_threads(wildcards):
    """CPUs of a tuning job: the model's 'cpus' where set (a cluster); else, on the CPU, 1 (two
    one-thread jobs side by side tune more rows per second than one two-thread job;
    benchmarks/README.md), and on a local GPU every core given, so one job runs at a time.
    """
    cpus = configured("models", wildcards.model).get("cpus")
    if cpus:
        return cpus
    return max(1, workflow.cores or 1) if tunes_on_gpu() else 1


def tuning_cpus(wildcards, threads):
    """Slurm cpus_per_task of a tuning job: its threads (the profile's default is 1)."""
    return threads


def model_mem_mb(wildcards, attempt):
    """Memory of a job that loads the model (config models.<name>.mem_mb), doubled on a retry."""
    return (
        configured("models", wildcards.model).get("mem_mb", jobs.MODEL_MEM_MB) * attempt
    )


def model_runtime(wildcards, attempt):
    """Minutes of one tuning job: config models.<name>.runtime per shard it tunes (an experiment's
    rows of one method: what their jobs would ask for without share_jobs), more on a retry (a job
    that hit its time limit resumes from its checkpoint)."""
    shards = len(tuning_job(wildcards)["shards"])
    return (
        configured("models", wildcards.model).get("runtime", jobs.MODEL_RUNTIME)
        * shards
        * attempt
    )


def experiment_shards(wildcards):
    """The folders of the tuning jobs holding an experiment's shards (distreach.jobs)."""
    configured("experiments", wildcards.experiment)
    return [
        job_folder(key)
        for key in jobs.experiment_jobs(TUNING_JOBS, wildcards.experiment)
    ]


def experiment_tables(wildcards):
    """The tables of an experiment's shards in those folders (distreach.jobs)."""
    return jobs.experiment_tables(TUNING_JOBS, wildcards.experiment, job_folder)


def figure_inputs(wildcards):
    """The files a figure draws from: what its registry entry says it reads
    (distreach.figureregistry): its experiments' collected tables, its models' POS tables or its
    model's next-token distributions."""
    kind, names = figureregistry.figure_reads(
        wildcards.fig, configured("figures", wildcards.fig)
    )
    return {kind: [FIGURE_FILES[kind].format(name) for name in names]}


def not_drawn(wildcards):
    """Input of a figure the workflow does not draw: none; the request is an error."""
    raise WorkflowError(
        f"{expand(rules.not_drawn.output[0], fig=wildcards.fig, ext=wildcards.ext)[0]}: "
        f"{figureregistry.NOT_DRAWN[wildcards.fig]}; "
        f"the figures drawn are {', '.join(sorted(figureregistry.FIGURES))}"
    )


def next_token_spec(wildcards):
    """The config entry (schema defaults filled in) of the figure of next-token distributions
    (one that reads 'nexttoken' in distreach.figureregistry: Fig. 3) drawn on this model.
    """
    for fig, spec in FIGURES.items():
        if (
            figureregistry.FIGURES[fig].reads == "nexttoken"
            and spec["model"] == wildcards.model
        ):
            return spec
    raise WorkflowError(
        f"{FIGURE_FILES['nexttoken'].format(wildcards.model)}: no figure of next-token distributions is drawn on model {wildcards.model}"
    )


def next_token_tuning(wildcards):
    """The config's tuning settings the next-token job reads: all of them where Fig. 3 tunes a soft
    prompt, else the BOS policy alone (a change to the others reruns nothing)."""
    if next_token_spec(wildcards)["tune"]:
        return config["tuning"]
    return {k: v for k, v in config["tuning"].items() if k == "bos"}


def figure_spec(wildcards):
    return FIGURES[wildcards.fig]


def figure_caption(wildcards):
    """The report caption of a figure (report/figure.rst renders it)."""
    return figureregistry.FIGURES[wildcards.fig].caption


def achieved_inputs(wildcards):
    """The report's target-vs-achieved figure: the collected tables of Fig. 1 and the
    vocabulary tables of their models (token texts)."""
    experiments = figureregistry.figure_experiments(FIGURES["fig01"])
    models = {m for e in experiments for m in config["experiments"][e]["models"]}
    return {
        "tables": [FIGURE_FILES["tables"].format(e) for e in experiments],
        "vocab": [vocab_file(m) for m in sorted(models)],
    }


def all_outputs():
    """What the default target makes, from the rules' own outputs (called after every rule is defined)."""
    tables = expand(rules.collect.output, experiment=list(config["experiments"]))
    tables += expand(rules.materialise_model.output.vocab, model=list(config["models"]))
    # POS tables: those a figure or a target family reads, as their inputs
    figures = expand(rules.figure.output, fig=list(FIGURES))
    pages = list(rules.claims.output)
    if "fig01" in FIGURES:  # the report's target vs achieved, for rows of Fig. 1
        pages += list(rules.achieved.output)
    return tables + figures + pages
