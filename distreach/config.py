"""Configuration checks that the JSON schema cannot express, and one-line messages for schema errors."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import yaml

from .errors import DistreachError
from .figureregistry import FIGURES, NOT_DRAWN, figure_experiments
from .schema import load as config_schema  # the schema file with the registry's figure entries
from .settings import FAMILY_KEYS


def _where(path) -> str:
    """A key's path as messages name it, ``a.b[0].c``; a key with characters that do not print
    (a newline, say) as its Python literal, so the message stays one line."""
    parts = [f"[{p}]" if isinstance(p, int) else str(p) if str(p).isprintable() else repr(str(p)) for p in path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def schema_error_line(config: dict, schema: dict) -> str | None:
    """The most relevant violation of ``schema`` (:func:`config_schema`) by ``config`` as one line
    naming the key, or None."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    if error.validator == "additionalProperties" and error.schema.get("additionalProperties") is False:
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        known = ", ".join(sorted(error.schema.get("properties", {})))
        why = f"; {NOT_DRAWN[extra[0]]}" if list(error.absolute_path) == ["figures"] and extra[0] in NOT_DRAWN else ""
        return f"config key {_where([*error.absolute_path, extra[0]])}: unknown key (allowed here: {known}){why}"
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"config key {_where([*error.absolute_path, missing])}: missing required key"
    if error.validator == "oneOf" and "description" in error.schema:
        return f"config key {_where(error.absolute_path)}: {error.schema['description']}"
    return f"config key {_where(error.absolute_path)}: {error.message}"


# top-level keys of earlier versions -> what a config says instead
RENAMED = {
    "bundle_experiments": "renamed to share_jobs",
    "twins": "a stand-in is now a model source: models.<name>.source: {stand_in: <arch>, seed: <n>}",
}


def check_renamed(config: dict) -> None:
    """A key of an earlier version is refused with one line naming what replaced it."""
    for key, instead in RENAMED.items():
        if key in config:
            raise DistreachError(f"config key {key}: {instead}")


def check_config(config: dict, schema_path: str | Path, validate) -> None:
    """Check a workflow config: ``validate(config, schema=...)`` (the workflow's schema validator,
    which takes a schema file and also fills in defaults; any exception it raises means a schema
    violation) with :func:`config_schema`, after :func:`check_renamed`, then the references
    between sections. Raises DistreachError with one line naming the key."""
    check_renamed(config)
    check_family_keys(config)  # before the schema's defaults fill in keys a family does not read
    schema = config_schema(schema_path)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(schema_path).name
        path.write_text(json.dumps(schema))
        try:
            validate(config, schema=str(path))
        except Exception as exc:  # the validator's own error type (the library imports no Snakemake)
            line = schema_error_line(config, schema)
            raise DistreachError(line or " ".join(str(exc).split())) from None
    check_references(config)
    check_sources(config)
    check_tuning(config)


def check_family_keys(config: dict) -> None:
    """A target family's entry holds only keys its kind reads (:data:`distreach.settings.FAMILY_KEYS`):
    a key of another kind is refused naming the kinds that read it (a forgotten ``kind``, say)."""
    families = config.get("targets")
    for name, fam in (families.items() if isinstance(families, dict) else ()):
        kind = fam.get("kind", "vanilla") if isinstance(fam, dict) else None
        if not isinstance(kind, str) or kind not in FAMILY_KEYS:
            continue  # the schema's checks say what is wrong
        if other := next((k for k in fam if k != "kind" and k not in FAMILY_KEYS[kind]), None):
            readers = [k for k, keys in FAMILY_KEYS.items() if other in keys]
            if readers:  # else an unknown key: the schema's checks name it
                kinds = ", ".join(readers[:-1]) + (" and " if len(readers) > 1 else "") + readers[-1]
                hint = "" if "kind" in fam else ": is its kind set?"
                raise DistreachError(f"config key targets.{name}.{other}: {'an' if kind[0] in 'aeiou' or kind == 'lm' else 'a'} "
                                     f"{kind} family has no {other} (a key of {kinds} families{hint})")


def check_sources(config: dict) -> None:
    """A model's ``local`` folder or ``gguf_file`` exists (a relative path is read from the
    workflow's working directory, as the jobs read it)."""
    for name, entry in config.get("models", {}).items():
        source = entry.get("source", {})
        if "local" in source:
            folder = Path(source["local"]).expanduser()
            if not folder.is_dir():
                raise DistreachError(f"config key models.{name}.source.local: no folder {folder}{_from_cwd(folder)}")
            if not (folder / "config.json").is_file():
                raise DistreachError(f"config key models.{name}.source.local: {folder} has no config.json "
                                     "(not a folder written by save_pretrained)")
        if "gguf_file" in source and not (path := Path(source["gguf_file"]).expanduser()).is_file():
            raise DistreachError(f"config key models.{name}.source.gguf_file: no file {path}{_from_cwd(path)}")


def _from_cwd(path: Path) -> str:
    """Where a relative path was looked for, for a message."""
    return "" if path.is_absolute() else f" (from {Path.cwd()})"


def check_tuning(config: dict) -> None:
    """The settings of every tuning job (:func:`distreach.jobs.tuning_jobs`: the config's
    ``tuning``, the experiment's, the method's entry, each over the one before) as the engine
    takes them (:class:`distreach.settings.TuneConfig`): what it refuses is refused here, before
    any job, naming the key where it is set (the most specific of the three that sets it) and the
    rows it is for. (Fig. 3's soft prompt tunes with the config's ``tuning`` less what is not a
    soft prompt's, :func:`distreach.settings.soft_tuning`, which the schema's checks cover.)"""
    from .jobs import tuning_jobs
    from .settings import tuning_config

    experiments, methods = config.get("experiments", {}), config.get("methods", {})
    for job in tuning_jobs(config).values():
        for shard in job["shards"]:
            try:
                tuning_config(shard["tuning"])
            except DistreachError as exc:
                name, method = shard["experiment"], shard["method"]
                layers = ((f"methods.{method}", methods.get(method, {})),
                          (f"experiments.{name}.tuning", experiments[name].get("tuning", {})),
                          ("tuning", config.get("tuning", {})))
                found = re.match(r"tuning\.(\w+): (.*)", str(exc))
                key, why = found.groups() if found else (None, str(exc))
                where = next((f"{layer}.{key}" for layer, values in layers if key in values), f"tuning.{key}")
                raise DistreachError(f"config key {where}: {why}; for experiment {name}'s {method} rows") from None


def check_references(config: dict) -> None:
    """Names used in experiments, figures and random_init sources must be defined; an entropy grid
    with a ``stop`` must have a level."""
    for name, family in config.get("targets", {}).items():
        grid = family.get("grid", {}) if isinstance(family, dict) else {}
        if grid.get("stop") is not None and grid.get("start", 0) > grid["stop"]:
            raise DistreachError(f"config key targets.{name}.grid: start {grid['start']} is above stop {grid['stop']}: no levels")
    models = config.get("models", {})
    for name, entry in models.items():
        if "embedded" in entry.get("source", {}):
            from .embedded import embedded_source

            embedded_source(entry["source"]["embedded"], f"config key models.{name}.source.embedded")
        base = entry.get("source", {}).get("random_init")
        if base is not None:
            if base not in models:
                raise DistreachError(f"config key models.{name}.source.random_init: unknown model {base!r}")
            if "random_init" in models[base].get("source", {}):
                raise DistreachError(f"config key models.{name}.source.random_init: {base!r} is itself random_init")
    families = config.get("targets", {})
    for name, fam in families.items():
        kind = fam.get("kind", "vanilla")
        if kind in ("matched", "shuffled", "migrated"):
            if fam.get("of") not in families:
                raise DistreachError(f"config key targets.{name}.of: a {kind} family needs an existing family (got {fam.get('of')!r})")
            if fam["of"] == name:
                raise DistreachError(f"config key targets.{name}.of: a family cannot derive from itself")
        if kind == "migrated" and "source" not in fam:
            raise DistreachError(f"config key targets.{name}.source: missing required key (the model whose targets are migrated)")
        if kind == "migrated" and fam.get("source") not in models:
            raise DistreachError(f"config key targets.{name}.source: unknown model {fam.get('source')!r}")
    methods = {"soft", "hard", "hybrid", "gcg", *config.get("methods", {})}
    experiments = config.get("experiments", {})
    named = config.get("methods", {})
    layers = [("tuning", config.get("tuning", {}), list(experiments.values()))] + [
        (f"experiments.{e}.tuning", x.get("tuning", {}), [x]) for e, x in experiments.items()]
    for where, tuning, reached in layers:
        # a tuning's method is read by a named method whose entry sets none, and by nothing else
        if "method" in tuning and not any(m in named and "method" not in named[m]
                                          for x in reached for m in x.get("methods", ["soft"])):
            raise DistreachError(f"config key {where}.method: every method it applies to sets its own; an experiment's "
                                 "methods are its 'methods' list (experiments.<name>.methods)")
    for ename, exp in experiments.items():
        for i, m in enumerate(exp.get("models", [])):
            if m not in models:
                raise DistreachError(f"config key experiments.{ename}.models[{i}]: unknown model {m!r}")
        if exp.get("targets") not in families:
            raise DistreachError(f"config key experiments.{ename}.targets: unknown target family {exp.get('targets')!r}")
        for i, m in enumerate(exp.get("methods", [])):
            if m not in methods:
                raise DistreachError(f"config key experiments.{ename}.methods[{i}]: unknown method {m!r}")
    for fig, spec in (config.get("figures") or {}).items():
        check_figure(fig, spec, config)


def _key(fig: str, spec: dict, name: str, i: int) -> str:
    """Where the i-th name of a figure entry's list key is (or the key itself, holding one name)."""
    return f"figures.{fig}.{name}" + (f"[{i}]" if isinstance(spec[name], list) else "")


def check_figure(fig: str, spec: dict, config: dict) -> None:
    """A figure's config entry (``figures.<fig>``) against the rest of the config, as its registry
    entry (:data:`distreach.figureregistry.FIGURES`) asks: its experiments exist, tune on the target kinds
    it needs and hold its model and pairs; its models exist."""
    entry, models, experiments = FIGURES[fig], config.get("models", {}), config.get("experiments", {})
    for name in ("model", "models"):
        for i, m in enumerate([spec[name]] if isinstance(spec.get(name), str) else spec.get(name, [])):
            if m not in models:
                raise DistreachError(f"config key {_key(fig, spec, name, i)}: unknown model {m!r}")
    names = figure_experiments(spec)
    key = "experiments" if "experiments" in spec else "experiment"
    for i, exp in enumerate(names):
        if exp not in experiments:
            raise DistreachError(f"config key {_key(fig, spec, key, i)}: unknown experiment {exp!r}")
        kind = config.get("targets", {}).get(experiments[exp]["targets"], {}).get("kind", "vanilla")
        if entry.target_kinds and kind not in entry.target_kinds:
            needs = " or ".join(entry.target_kinds)
            raise DistreachError(
                f"config key {_key(fig, spec, key, i)}: {exp!r} tunes on {kind} targets, {fig} needs {needs} targets"
            )
    # what it draws: rows of its method (by that name, in an experiment's methods) on its target kinds,
    # of its model where it has one, in one experiment at least
    tuned = [experiments[e] for e in names if "model" not in spec or spec["model"] in experiments[e]["models"]]
    if tuned and (entry.needs_kinds or entry.method) and not any(
            (not entry.needs_kinds or config["targets"][x["targets"]].get("kind", "vanilla") in entry.needs_kinds)
            and (entry.method is None or entry.method in x.get("methods", ["soft"])) for x in tuned):
        what = (f" on {' or '.join(entry.needs_kinds)} targets" if entry.needs_kinds else "") + (
            f" with method {entry.method!r} in its methods" if entry.method else "")
        where = f" (of model {spec['model']})" if "model" in spec else ""
        raise DistreachError(f"config key figures.{fig}.{key}: none of {names}{where} tunes{what}, which {fig} draws")
    if entry.pairs is not None and entry.pairs.random_init:
        for a, b in spec.get("pairs", {}).items():
            for m in (a, b):
                if m not in models:
                    raise DistreachError(f"config key figures.{fig}.pairs.{a}: unknown model {m!r}")
            if models[b].get("source", {}).get("random_init") != a:
                raise DistreachError(f"config key figures.{fig}.pairs.{a}: {b!r} is not a random_init copy of {a!r} "
                                     f"(models.{b}.source: {{random_init: {a}}})")
    if entry.reads != "collected":
        return
    used = {m for exp in names for m in experiments[exp]["models"]}
    wanted = [spec["model"]] if "model" in spec else [m for pair in spec.get("pairs", {}).items() for m in pair]
    for model in wanted:
        if model not in used:
            raise DistreachError(f"config key figures.{fig}: model {model!r} is in none of its experiments {names}")
