"""The workflow config's JSON schema (schemas/config.schema.yaml) and the defaults it declares.

A setting the workflow and the library share (``checkpoint_seconds``, ``experiments.*.inits``,
``pos.tagger``, ...) has its default written once, in the schema: Snakemake's ``validate`` fills
it into the workflow config, and the library's functions take it from here."""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from .errors import DistreachError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


def load(path: str | Path = SCHEMA_PATH) -> dict:
    """The workflow config's JSON schema: the schema file, with each figure's config entry from
    the figure registry (:func:`distreach.figureregistry.figures_schema`)."""
    from .figureregistry import figures_schema

    out = yaml.safe_load(Path(path).read_text())
    out["properties"]["figures"].update(figures_schema())
    return out


@functools.cache
def schema() -> dict:
    if not SCHEMA_PATH.is_file():
        raise DistreachError(f"{SCHEMA_PATH}: the config schema is missing (distreach runs from its checkout)")
    return load()


def _resolve(node: dict) -> dict:
    while "$ref" in node:
        *_, section, name = node["$ref"].split("/")
        node = schema()[section][name]
    return node


def node(key: str) -> dict | None:
    """The schema of config key ``key``, a dotted path as the docs write it (``tuning.top_k``,
    ``figures.fig03.text``); ``*`` stands for any name in a section of named entries
    (``experiments.*.inits``). None if the schema has no such key."""
    here = schema()
    for part in key.split("."):
        here = _resolve(here)
        props = dict(here.get("properties", {}))
        for branch in here.get("oneOf", []):  # a model source: one of several forms
            props.update(branch.get("properties", {}))
        if part in props:
            here = props[part]
        elif part == "*" and isinstance(here.get("additionalProperties"), dict):
            here = here["additionalProperties"]
        else:
            return None
    return _resolve(here)


def default(key: str):
    """The default the schema declares for config key ``key`` (see :func:`node`)."""
    found = node(key)
    if found is None or "default" not in found:
        raise DistreachError(f"config key {key}: the schema declares no default for it")
    return found["default"]
