"""What README.md and docs/*.md show exists in the code: every ``--flag`` of a ``distreach``
command is accepted by that subcommand's parser (a bare one by some subcommand or by Snakemake),
every config key path is in the schema, every ``snakemake`` target is a rule's output, every
``distreach.module.name`` can be imported; and the defaults written once are the ones used."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

from distreach import api, cli, engine, families, gcg, jobs, nexttoken, pos, schema, targetfiles, tuning, units, vanilla

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
COMMAND = re.compile(r"(?:^|[\s/`])distreach\s+(tune|show|generate|target|models)\b")


def segments(text: str) -> list[str]:
    """The shell lines of fenced code blocks (continuations joined, comments dropped) and the
    inline code spans of the prose."""
    out, prose = [], []
    for i, part in enumerate(re.split(r"^```[^\n]*\n", text, flags=re.M)):
        if i % 2:  # inside a fence
            for line in part.replace("\\\n", " ").splitlines():
                out.append(re.split(r"\s#", line)[0])
        else:
            prose.append(part)
    out += re.findall(r"`([^`]+)`", "\n".join(prose))
    return out


def doc_segments():
    return [(doc.relative_to(REPO), seg) for doc in DOCS for seg in segments(doc.read_text())]


def distreach_flags() -> dict[str, set[str]]:
    subparsers = cli.parser()._subparsers._group_actions[0].choices  # argparse has no public accessor
    return {name: set(sub._option_string_actions) for name, sub in subparsers.items()}


def snakemake_flags() -> set[str]:
    from snakemake.cli import get_argument_parser

    return set(get_argument_parser()._option_string_actions)


def documented_flags():
    """(doc, subcommand or None, flag) for every flag the docs show outside snakemake and pytest
    commands; None for a flag shown on its own."""
    found = []
    for doc, seg in doc_segments():
        parts = COMMAND.split(seg)  # [before, cmd, args, cmd, args, ...]
        for cmd, args in zip(parts[1::2], parts[2::2]):
            found += [(doc, cmd, flag) for flag in FLAG.findall(re.split(r"[|;]|\bsnakemake\b", args)[0])]
        if len(parts) == 1 and seg.startswith("--"):
            found.append((doc, None, FLAG.match(seg).group()))
    return found


def test_docs_show_distreach_commands_with_flags():
    shown = documented_flags()
    assert {cmd for _, cmd, _ in shown} >= {"tune", "show", "generate", "target"}
    assert len([f for _, cmd, f in shown if cmd is None]) > 20  # the flags api.md describes one by one


def test_every_documented_flag_is_accepted_by_its_command():
    flags = distreach_flags()
    everywhere = set().union(*flags.values())
    snakemake = snakemake_flags()
    wrong = [f"{doc}: distreach {cmd} {flag}" for doc, cmd, flag in documented_flags()
             if flag not in (flags[cmd] if cmd else everywhere | snakemake)]
    assert not wrong, f"flags the CLI does not accept: {wrong}"


def test_every_documented_snakemake_flag_exists():
    snakemake = snakemake_flags()
    shown = [(doc, flag) for doc, seg in doc_segments() for m in re.finditer(r"\bsnakemake((?:\s+[^\s|;#]+)*)", seg)
             for flag in FLAG.findall(m.group(1))]
    assert len(shown) > 10
    assert not [s for s in shown if s[1] not in snakemake]


CONFIG_KEY = re.compile(r"^([a-z_]+)((?:\.(?:[a-z0-9_]+|<[a-z]+>))+)$")


def documented_config_keys():
    top = set(schema.schema()["properties"])
    keys = []
    for doc, seg in doc_segments():
        m = CONFIG_KEY.match(seg.strip())
        if m and m.group(1) in top:
            keys.append((doc, re.sub(r"<[a-z]+>", "*", seg.strip())))
    return keys


def test_every_documented_config_key_is_in_the_schema():
    keys = documented_config_keys()
    assert {"tuning.top_k", "pos.min_pos_prob", "figures.fig03.text"} <= {k for _, k in keys}
    assert not [f"{doc}: {key}" for doc, key in keys if schema.node(key) is None]


def rule_outputs() -> list[re.Pattern]:
    """Each rule's output patterns (the string literals of its output: section, and the paths of
    distreach.figurefiles it names, formatted as it formats them), wildcards as regular expressions."""
    from distreach import figurefiles

    named = {k: v for k, v in vars(figurefiles).items() if isinstance(v, str)}
    named |= {f'FIGURE_FILES["{k}"]': v for k, v in figurefiles.FIGURE_FILES.items()}
    name = "|".join(re.escape(k) for k in sorted(named, key=len, reverse=True))
    patterns = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.findall(r"^    output:\n((?:        .*\n)+)", smk.read_text(), flags=re.M):
            paths = []
            for m in re.finditer(rf'(?<![\w"])({name})(?!\w)(\.format\(([^)]*)\))?|"([^"]+)"', block):
                if m.group(4) is not None:  # a literal
                    paths.append(m.group(4))
                elif m.group(2) is None:  # a path named as it is
                    paths.append(named[m.group(1)])
                else:  # NAME.format("...", key="..."): formatted as the rule formats it
                    args = m.group(3)
                    keys = dict(re.findall(r'(\w+)="([^"]*)"', args))
                    plain = re.findall(r'(?<![=\w])"([^"]*)"', args)
                    paths.append(named[m.group(1)].format(*plain, **keys))
            for path in paths:
                if path.startswith("results/"):
                    patterns.append(re.compile(re.sub(r"\\\{\w*\\\}", "[^/]+", re.escape(path)) + "$"))
    return patterns


def test_every_documented_snakemake_target_is_a_rule_output():
    targets = [(doc, t) for doc, seg in doc_segments() if re.match(r"\s*(\S*/)?snakemake\b", seg)
               for t in re.findall(r"(?<!\S)(results/\S+)", seg)]
    assert len(targets) >= 3
    outputs = rule_outputs()
    assert not [f"{doc}: {t}" for doc, t in targets if not any(p.match(t) for p in outputs)]


def test_every_documented_library_name_exists():
    names = {(doc, m.group(1)) for doc, seg in doc_segments()
             for m in re.finditer(r"\b(distreach(?:\.[A-Za-z_]\w*)+)", seg)}
    for doc in DOCS:  # the imports of the docs' Python examples
        for module, items in re.findall(r"^from (distreach\.\w+) import ([\w, ]+)$", doc.read_text(), flags=re.M):
            names |= {(doc.relative_to(REPO), f"{module}.{item.strip()}") for item in items.split(",")}
    assert len(names) > 15
    missing = []
    for doc, name in sorted(names):
        parts = name.split(".")
        try:
            obj = importlib.import_module(".".join(parts[:2]))
        except ModuleNotFoundError:
            missing.append(f"{doc}: {name}")
            continue
        for attr in parts[2:]:
            if not hasattr(obj, attr):
                missing.append(f"{doc}: {name}")
                break
            obj = getattr(obj, attr)
    assert not missing, f"documented names that do not exist: {missing}"


# ---------------------------------------------------------------- defaults written once


def test_library_defaults_are_the_schemas():
    """The settings the workflow and the library share take the schema's default in both."""
    def arg(fn, name):
        return inspect.signature(fn).parameters[name].default

    seconds = schema.default("checkpoint_seconds")
    assert arg(engine.tune, "checkpoint_seconds") == seconds
    assert all(arg(f, "checkpoint_seconds") == seconds
               for f in (tuning.run_shard, tuning.run_job, tuning.tune_rows, tuning.tune_shards, gcg.tune_gcg))
    inits = schema.default("experiments.*.inits")
    assert arg(api.tune_target, "inits") == inits
    assert cli.parser().parse_args(["tune", "--model", "m", "--target", "t.json"]).inits == inits
    assert arg(pos.write_pos, "tagger") == schema.default("pos.tagger")
    assert arg(pos.write_pos, "min_pos_prob") == arg(pos.pos_table, "min_pos_prob") == schema.default("pos.min_pos_prob")
    assert arg(pos.write_pos, "batch_size") == arg(pos.pos_table, "batch_size") == schema.default("pos.batch_size")
    unit = schema.default("entropy_unit")
    assert units.DEFAULT_UNIT == unit
    assert arg(api.make_target, "unit") == arg(api.token_target, "unit") == arg(vanilla.EntropyGrid, "unit") == unit
    assert arg(targetfiles.token_target, "unit") == arg(nexttoken.shapes_table, "unit") == unit
    assert cli.parser().parse_args(["target", "vanilla", "--model", "m", "--entropy", "1", "--out", "t.arrow"]).unit == unit


def described_default(description: str):
    """The value of a schema description's ``(default X...)``, or None."""
    m = re.search(r"\(default (\[[^\]]*\]|[^,;)]+)", description)
    return None if m is None else yaml.safe_load(m.group(1))


FAMILY_DEFAULTS = {  # a family setting the schema describes -> the code's default
    "per_level": vanilla.PER_LEVEL, "tolerance": vanilla.TOLERANCE, "max_iters": vanilla.MAX_ITERS,
    "ks": list(families.OutlierSettings().ks), "alpha": families.OutlierSettings().alpha,
    "beta": families.OutlierSettings().beta, "delta": families.OutlierSettings().delta,
    "n": families.LM_PROMPTS, "prompt_len": families.LM_PROMPT_LEN, "copies": families.SHUFFLED_COPIES,
    "tags": list(families.DEFAULT_POS_TAGS), "n_tokens": families.POS_TOKENS, "draws": families.POS_DRAWS,
}


def test_schema_describes_the_model_resources_the_workflow_asks_for():
    described = {key: described_default(schema.node(f"models.*.{key}")["description"]) for key in ("mem_mb", "runtime")}
    assert described == {"mem_mb": jobs.MODEL_MEM_MB, "runtime": jobs.MODEL_RUNTIME}


@pytest.mark.parametrize("key", sorted(FAMILY_DEFAULTS))
def test_schema_describes_the_family_defaults_the_code_uses(key):
    described = described_default(schema.node(f"targets.*.{key}")["description"])
    assert described == FAMILY_DEFAULTS[key], f"targets.<name>.{key}: the schema says {described}"


def test_schema_describes_the_tuning_defaults_the_engine_uses():
    code = {f.name: f.default for f in dataclasses.fields(engine.TuneConfig)}
    described = {key: described_default(spec.get("description", ""))
                 for key, spec in schema.node("tuning")["properties"].items()}
    checked = {key: value for key, value in described.items() if isinstance(value, (bool, int, float))}
    assert "top_k" in checked
    assert not {key: (value, code[key]) for key, value in checked.items() if code[key] != value}


def test_the_target_kinds_table_gives_the_keys_each_kind_reads():
    """docs/targets.md's table of target kinds lists, per kind, the keys distreach.settings.FAMILY_KEYS
    says it reads (the config check refuses the others)."""
    from distreach.settings import FAMILY_KEYS

    rows = re.findall(r"^\| `(\w+)` \| .* \| ((?:`\w+`(?:, )?)+) \|$", (REPO / "docs" / "targets.md").read_text(), re.M)
    assert {kind: set(re.findall(r"`(\w+)`", keys)) for kind, keys in rows} == {k: set(v) for k, v in FAMILY_KEYS.items()}
