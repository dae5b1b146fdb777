"""Property-based fuzzing of every file a user hands over: model files (.gguf; a model folder's
config.json, tokenizer.json, tokenizer_config.json and model.safetensors), target files (.json,
.npy, .arrow) and the workflow's config.

Each case is a valid file broken one way (truncated at a random offset, a byte flipped,
a valid-looking header with garbage after it, a value of the wrong type or shape, empty or huge
values) and run through the ``distreach`` CLI in-process with a fresh model cache: it must end
with exit status 2, exactly one line on stderr naming the file and what is wrong, and nothing
written. A flipped byte may leave a valid file (a weight or a probability changed a little):
then the run must succeed. Examples are bounded and derandomised, so CI is deterministic."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from distreach import cli
from distreach.config import check_config
from distreach.errors import DistreachError
from distreach.io import write_arrow
from distreach.vanilla import EntropyGrid, VanillaSettings, vanilla_targets

from .conftest import TINY_WORDS, save_tiny, tiered, write_tiny_gguf

V = 93  # the tiny tokenizer: 3 special tokens + 90 words
REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Valid inputs of every kind, and a model cache already holding the tiny model."""
    root = tmp_path_factory.mktemp("fuzz")
    model = save_tiny(root / "tiny", "llama")
    emb = write_tiny_gguf(root / "tiny.gguf")
    np.save(root / "uniform-gguf.npy", np.full(len(emb), 1 / len(emb)))  # a target over the GGUF's vocabulary
    targets = vanilla_targets(V, EntropyGrid(step=3.0), VanillaSettings(per_level=1))
    write_arrow(targets, root / "good.arrow")
    probs = np.exp(targets.column("logprobs").combine_chunks().flatten().to_numpy().reshape(-1, V).astype(np.float64))
    np.save(root / "good.npy", probs / probs.sum(1, keepdims=True))
    (root / "good.json").write_text(json.dumps({"table": 0.5, "river": 0.3, "Paris": 0.2}))
    warm = root / "warm-cache"
    mp = pytest.MonkeyPatch()
    mp.setenv("DISTREACH_CACHE", str(warm))
    assert cli.main(["tune", "--model", str(model), "--target", str(root / "good.json"), "--max-steps", "1",
                     "--inits", "1", "-q"]) == 0
    mp.undo()
    return {"root": root, "model": model, "gguf": root / "tiny.gguf", "warm": warm}


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def run_cli(capsys, argv: list[str], cache: Path) -> tuple[int, str, str]:
    old = os.environ.get("DISTREACH_CACHE")
    os.environ["DISTREACH_CACHE"] = str(cache)
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    finally:
        if old is None:
            del os.environ["DISTREACH_CACHE"]
        else:
            os.environ["DISTREACH_CACHE"] = old
    out, err = capsys.readouterr()
    return code, out, err


def check_rejected(code, err, named: Path, case, before, after):
    lines = err.strip().splitlines()
    assert code == 2, f"{case}: exit {code}, stderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("distreach: error: "), f"{case}: stderr:\n{err}"
    assert str(named) in lines[0], f"{case}: the error does not name {named}: {lines[0]}"
    assert "Traceback" not in err
    assert after == before, f"{case}: files written: {sorted(set(after) - set(before))}"


def tune(capsys, tmp: Path, model, target, cache: Path, out: Path):
    """Run ``distreach tune`` on a scratch folder; (code, stderr, listing before, listing after)."""
    before = listing(tmp)
    code, _, err = run_cli(capsys, ["tune", "--model", str(model), "--target", str(target), "--max-steps", "1",
                                    "--inits", "1", "-q", "--out", str(out)], cache)
    return code, err, before, listing(tmp)


# --- byte-level corruption of a valid file --------------------------------------------------

class Blob(bytes):
    """File content that hypothesis reports by its length."""

    def __repr__(self):
        return f"<{len(self)} bytes>"


def corruptions(data: bytes, header_end: int, flips: bool = True):
    """(description, bytes, must_fail) cases of one valid file whose structure ends at header_end:
    truncations, garbage after the header (shorter than what the header promises), empty, and
    (if ``flips``) one flipped byte in the header, which may leave the file valid."""
    n = len(data.rstrip())
    cases = [
        st.integers(0, n - 1).map(lambda k: (f"truncated at {k}", Blob(data[:k]), True)),
        st.binary(max_size=max(0, len(data) - header_end - 1)).map(
            lambda junk: (f"header + {len(junk)} garbage bytes", Blob(data[:header_end] + junk), True)),
        st.just(("empty", b"", True)),
    ]
    if flips:
        cases.append(st.tuples(st.integers(0, header_end - 1), st.integers(1, 255)).map(
            lambda f: (f"byte {f[0]} ^ {f[1]}", Blob(data[:f[0]] + bytes([data[f[0]] ^ f[1]]) + data[f[0] + 1:]), False)))
    return st.one_of(cases)


def check_case(capsys, tmp, code, err, named, case, before, after, must_fail, cache):
    event(f"exit {code}")
    if code == 0 and not must_fail:  # the flip left a valid file: the run succeeded
        assert "Traceback" not in err
        shutil.rmtree(cache, ignore_errors=True)
        return
    check_rejected(code, err, named, case, before, after)


def test_corrupt_gguf_files(work, capsys, tmp_path):
    import gguf

    data = work["gguf"].read_bytes()
    header_end = gguf.GGUFReader(work["gguf"]).data_offset  # metadata and tensor infos end here

    @FUZZ
    @given(case=corruptions(data, header_end))
    def prop(case):
        what, data, must_fail = case
        tmp = tmp_path / "case"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        path = tmp / "model.gguf"
        path.write_bytes(data)
        cache = tmp / "cache"
        code, err, before, after = tune(capsys, tmp, path, work["root"] / "uniform-gguf.npy", cache, tmp / "out.arrow")
        check_case(capsys, tmp, code, err, path, f"gguf {what}", before, after, must_fail, cache)
        if must_fail:  # truncated, empty, garbage after the header: caught reading the file, not later
            assert "not a GGUF file, or a truncated or corrupt one" in err, err

    prop()


# --- model folders ---------------------------------------------------------------------------

SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
              "num_hidden_layers")
WRONG_TYPES = st.one_of(st.text(max_size=4), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
                        st.floats().filter(lambda x: not float(x).is_integer()), st.sampled_from([0, -1, -(2**31)]))
HUGE = st.sampled_from([2**40, 10**12, 10**30])
NOT_AN_OBJECT = st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=5), st.none())


def _json_mutations(name: str, text: str):
    """Truncated, not an object, empty; for config.json a shape key of a wrong type or huge."""
    data = text.encode()
    cases = [
        st.integers(0, len(data.rstrip()) - 1).map(lambda k: (f"{name} truncated at {k}", name, data[:k], True)),
        NOT_AN_OBJECT.map(lambda v: (f"{name} = {v!r}", name, json.dumps(v).encode(), True)),
        st.just((f"{name} empty", name, b"", True)),
    ]
    obj = json.loads(text)
    if name == "config.json":
        def put(kv):
            key, value = kv
            return (f"config.json {key} = {value!r}", name, json.dumps({**obj, key: value}).encode(), True)

        layers = st.tuples(st.just("num_hidden_layers"), WRONG_TYPES)  # huge: the model would be built first
        sized = st.tuples(st.sampled_from(SHAPE_KEYS[:-1]), st.one_of(WRONG_TYPES, HUGE))
        other = st.sampled_from([("num_hidden_layers", 1), ("num_hidden_layers", 3), ("model_type", "gpt2")])  # another model's
        cases.append(st.one_of(layers, sized, other).map(put))
    if name == "tokenizer.json":
        cases.append(st.one_of(NOT_AN_OBJECT, st.text(max_size=3)).map(
            lambda v: (f"tokenizer.json model = {v!r}", name, json.dumps({**obj, "model": v}).encode(), True)))
    if name == "tokenizer_config.json":
        cases.append(st.one_of(st.integers(), st.lists(st.text(max_size=2), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)).map(  # a name of no class may load (fallback)
            lambda v: (f"tokenizer_config.json tokenizer_class = {v!r}", name, json.dumps({**obj, "tokenizer_class": v}).encode(), True)))
    return cases


def folder_cases(files: dict[str, bytes]):
    cases = []
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        cases += _json_mutations(name, files[name].decode())
    data = files["model.safetensors"]
    header_end = 8 + struct.unpack("<Q", data[:8])[0]  # u64 length, then the JSON header
    cases.append(corruptions(data, header_end).map(lambda c: (f"model.safetensors {c[0]}", "model.safetensors", *c[1:])))
    cases.append(HUGE.map(lambda h: (f"model.safetensors header length {h}", "model.safetensors",
                                     Blob(struct.pack("<Q", h % 2**64) + data[8:]), True)))
    return st.one_of(cases)


def test_corrupt_model_folders(work, capsys, tmp_path):
    files = {p.name: p.read_bytes() for p in Path(work["model"]).iterdir()}

    @FUZZ
    @given(case=folder_cases(files))
    def prop(case):
        what, name, data, must_fail = case
        tmp = tmp_path / "case"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(work["model"], tmp / "model")
        (tmp / "model" / name).write_bytes(data)
        cache = tmp / "cache"
        code, err, before, after = tune(capsys, tmp, tmp / "model", work["root"] / "good.json", cache, tmp / "out.arrow")
        # the line names the broken file, or the folder where only the loader can tell (a value's type)
        loader = what.startswith(("config.json num", "config.json hidden", "config.json vocab", "config.json inter", "config.json model",
                                  "tokenizer.json model =", "tokenizer_config.json tokenizer_class ="))
        named = tmp / "model" if loader else tmp / "model" / name
        check_case(capsys, tmp, code, err, named, what, before, after, must_fail, cache)

    prop()


# --- target files ----------------------------------------------------------------------------

NOT_A_TOKEN = st.text(max_size=6).filter(lambda s: s not in TINY_WORDS and s not in ("<unk>", "<bos>", "<eos>"))
NOT_A_PROBABILITY = st.one_of(st.text(max_size=3), st.lists(st.floats(0, 1), max_size=2), st.none(), st.booleans(),
                              st.dictionaries(st.text(max_size=2), st.floats(0, 1), max_size=1),
                              st.floats().filter(lambda x: not 0.49 <= x <= 0.51),  # NaN, inf, negative, sums off
                              st.sampled_from([10**400, -(10**400), 2**64]))


def json_target_cases(good: dict):
    text = json.dumps(good).encode()

    def value(v):
        return ("'table' = " + repr(v)[:40], json.dumps({**good, "table": v}).encode())

    def key(k):
        return (f"key {k!r}", json.dumps({k: 1.0}).encode())

    return st.one_of(
        st.integers(0, len(text) - 1).map(lambda k: (f"truncated at {k}", text[:k])),
        NOT_A_PROBABILITY.map(value),
        NOT_A_TOKEN.map(key),
        NOT_AN_OBJECT.map(lambda v: (f"top level {v!r}", json.dumps(v).encode())),
        st.sampled_from([("{}", b"{}"), ("nested 100000 deep", b"[" * 100000 + b"]" * 100000),
                         ("not UTF-8", b'{"\xff\xfe": 1.0}')]),
    )


def npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def npy_target_cases(good: np.ndarray):
    data = npy_bytes(good)
    header_end = len(data) - good.nbytes
    shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple).filter(lambda s: s[-1:] != (V,))
    return st.one_of(
        corruptions(data, header_end),
        shapes.map(lambda s: (f"shape {s}", npy_bytes(np.full(s, 0.25)), True)),
        st.sampled_from(["U3", "bool", "complex128", "object", "datetime64[s]", "V8"]).map(
            lambda t: (f"dtype {t}", npy_bytes(np.zeros(good.shape).astype(t) if t != "V8" else np.zeros(good.shape[0], "V8")), True)),
        st.tuples(st.integers(0, V - 1), st.sampled_from([np.nan, np.inf, -np.inf, -0.5, 2.0, 1e308])).map(
            lambda iv: (f"entry {iv[0]} = {iv[1]}", npy_bytes(np.where(np.arange(V) == iv[0], iv[1], good[0])), True)),
    )


ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
               "list<float>": pa.list_(pa.float32())}
ACCEPTED = {"target_id": ("string",), "kind": ("string",), "entropy_unit": ("string",), "seed": ("int64",),
            "vocab_size": ("int64",), "requested_entropy": ("int64", "float64"), "achieved_entropy": ("int64", "float64"),
            "logprobs": ()}


def arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def wrong_column(table: pa.Table, name: str, kind: str) -> pa.Table:
    n = table.num_rows
    values = {"string": ["x"] * n, "int64": [3] * n, "float64": [0.5] * n, "bool": [True] * n, "list<float>": [[0.1]] * n}
    i = table.column_names.index(name)
    return table.set_column(i, name, pa.array(values[kind], ARROW_TYPES[kind]))


def arrow_target_cases(table: pa.Table):
    data = arrow_bytes(table)
    columns = st.sampled_from(sorted(ACCEPTED))
    wrong = st.tuples(columns, st.sampled_from(sorted(ARROW_TYPES))).filter(lambda ck: ck[1] not in ACCEPTED[ck[0]])
    return st.one_of(
        corruptions(data, 8, flips=False),  # "ARROW1" magic and padding, then garbage
        st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)).map(  # anywhere: may stay valid
            lambda f: (f"byte {f[0]} ^ {f[1]}", Blob(data[:f[0]] + bytes([data[f[0]] ^ f[1]]) + data[f[0] + 1:]), False)),
        columns.map(lambda c: (f"no column {c}", arrow_bytes(table.drop_columns([c])), True)),
        wrong.map(lambda ck: (f"column {ck[0]} of {ck[1]}", arrow_bytes(wrong_column(table, *ck)), True)),
        st.just(("no rows", arrow_bytes(table.slice(0, 0)), True)),
        st.sampled_from([np.nan, np.inf, 5.0]).map(lambda x: (f"logprob {x}", arrow_bytes(table.set_column(
            table.column_names.index("logprobs"), "logprobs",
            pa.FixedSizeListArray.from_arrays(pa.array(np.full(table.num_rows * V, x, np.float32)), V))), True)),
        st.sampled_from(["dits", ""]).map(lambda u: (f"entropy unit {u!r}", arrow_bytes(table.set_column(
            table.column_names.index("entropy_unit"), "entropy_unit", pa.array([u] * table.num_rows))), True)),
    )


def target_cases(work, suffix):
    if suffix == ".json":
        return json_target_cases(json.loads((work["root"] / "good.json").read_text())).map(lambda c: (*c, True))
    if suffix == ".npy":
        return npy_target_cases(np.load(work["root"] / "good.npy"))
    return arrow_target_cases(pa.ipc.open_file(pa.memory_map(str(work["root"] / "good.arrow"))).read_all())


@pytest.mark.parametrize("suffix", [".json", ".npy", ".arrow"])
def test_corrupt_target_files(work, capsys, tmp_path, suffix):
    """The model is already in the cache: nothing may be added to it, or next to the target."""
    @settings(FUZZ, max_examples=40)
    @given(case=target_cases(work, suffix))
    def prop(case):
        what, data, must_fail = case
        tmp = tmp_path / "case"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(work["warm"], tmp / "cache")
        target = tmp / f"target{suffix}"
        target.write_bytes(data)
        code, err, before, after = tune(capsys, tmp, work["model"], target, tmp / "cache", tmp / "out.arrow")
        check_case(capsys, tmp, code, err, target, f"{target.name} {what}", before, after, must_fail, tmp / "cache")

    prop()


# --- the workflow's config ---------------------------------------------------------------------

def _paths(node, prefix=()):
    """Every key path of a config (dict keys and list indices)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


def _get(config, path):
    for key in path:
        config = config[key]
    return config


JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=5)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                           max_leaves=6)


def json_kind(value) -> str:
    """The JSON type of a value (an int and a float are both numbers)."""
    for kind, types in (("null", type(None)), ("boolean", bool), ("number", (int, float)), ("string", str), ("array", list)):
        if isinstance(value, types):
            return kind
    return "object"


def key_name(path) -> str:
    """A key's path as an error names it: ``a.b[0].c``, a key that does not print as its literal."""
    parts = [f"[{p}]" if isinstance(p, int) else p if p.isprintable() else repr(p) for p in path]
    return ".".join(parts).replace(".[", "[")


def _leaves(node):
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return [leaf for value in node for leaf in _leaves(value)]
    return [node]


NAMED = ("models", "targets", "experiments", "methods")  # sections of things other sections refer to by name


def referenced(config, path) -> bool:
    """Whether ``path`` is a named model, target family, experiment or method that the rest of the
    config refers to (then removing it breaks the config)."""
    if len(path) != 2 or path[0] not in NAMED:
        return False
    rest = copy.deepcopy(config)
    del rest[path[0]][path[1]]
    return path[1] in _leaves(rest)


def config_cases(config):
    """(description, ops, must_fail): a value of another JSON type (never valid), a key removed
    (invalid if other keys refer to it), a key added under any name (either), a key added under a
    name no key and no name of the config can have (``~...``: never valid)."""
    paths = list(_paths(config))
    dict_paths = [()] + [p for p in paths if isinstance(_get(config, p), dict)]

    def replace(pv):
        path, value = pv
        return f"{'.'.join(map(str, path))} = {value!r}"[:120], [("set", path, value)], True

    def add(must_fail):
        return lambda t: (f"{'.'.join(map(str, t[0]))} + {t[1]!r}", [("set", (*t[0], t[1]), t[2])], must_fail)

    return st.one_of(
        st.tuples(st.sampled_from(paths), JSON_VALUES).filter(lambda pv: json_kind(pv[1]) != json_kind(_get(config, pv[0]))).map(replace),
        st.sampled_from(paths).map(lambda p: (f"without {'.'.join(map(str, p))}", [("del", p, None)], referenced(config, p))),
        st.tuples(st.sampled_from(dict_paths), st.text(min_size=1, max_size=8), JSON_VALUES).map(add(False)),
        st.tuples(st.sampled_from(dict_paths), st.text(max_size=6).map(lambda t: "~" + t), JSON_VALUES).map(add(True)),
    )


def mutate(config, ops):
    config = copy.deepcopy(config)
    for op, path, value in ops:
        parent = _get(config, path[:-1])
        if op == "del":
            del parent[path[-1]]
        elif isinstance(parent, dict) or (isinstance(parent, list) and path[-1] < len(parent)):
            parent[path[-1]] = value
    return config


def names_the_key(message: str, config: dict, op: str, path: tuple) -> bool:
    """Whether a rejection ``config key K: ...`` of the config with ``path`` set or removed names the
    key that was broken: K is that key or a key inside it; or K is a key above it and the message
    quotes the key (a name that is not allowed), or is the schema's description of K (a model's
    source), or says K was left empty by the removal; or the message quotes the removed key or
    value where another key refers to it."""
    found = re.match(r"config key (.*?): (.*)$", message)
    if not found:
        return False
    named, what = found.groups()
    broken = key_name(path)
    if named == broken or named.startswith((broken + ".", broken + "[")):
        return True
    above = broken.startswith((named + ".", named + "[")) or named == "(top level)"
    quoted = {repr(path[-1])} | ({repr(_get(config, path))} if op == "del" and isinstance(_get(config, path), str) else set())
    emptied = op == "del" and named == key_name(path[:-1]) and what.endswith("should be non-empty")
    return (above and (repr(path[-1]) in what or what.startswith("must have exactly one of") or emptied)) or (
        op == "del" and any(q in what for q in quoted))


def test_fuzzed_configs_fail_with_one_line_naming_the_key(tmp_path):
    """The workflow's config check (what rules/common.smk runs before any job) on fuzzed configs: a
    value of the wrong type or an unknown key is refused, with one DistreachError line naming the
    key that was broken; a removed or added key may be fine, but if refused, the same holds; never
    another exception."""
    from snakemake.utils import validate

    from .conftest import save_tiny
    from .test_workflow import tiny_config

    base = tiny_config({arch: str(save_tiny(tmp_path / arch, arch)) for arch in ("llama", "gpt2")})
    schema = REPO / "schemas" / "config.schema.yaml"
    check_config(copy.deepcopy(base), schema, validate)  # the unbroken config passes
    outcomes = []

    @settings(FUZZ, max_examples=150)
    @given(case=config_cases(base))
    def prop(case):
        what, ops, must_fail = case
        config = mutate(base, ops)
        try:
            check_config(config, schema, validate)
        except DistreachError as exc:
            message = str(exc)
            assert "\n" not in message and message.startswith("config key "), f"{what}: {message}"
            op, path, _ = ops[0]
            assert names_the_key(message, base, op if path_exists(base, path) else "add", path), f"{what}: {message}"
            outcomes.append("rejected")
        else:
            assert not must_fail, f"{what}: accepted"
            outcomes.append("accepted")
        event(outcomes[-1])

    prop()
    assert set(outcomes) == {"accepted", "rejected"}  # the cases reach both outcomes


def path_exists(config, path) -> bool:
    parent = _get(config, path[:-1])
    return path[-1] in parent if isinstance(parent, dict) else path[-1] < len(parent)


@pytest.mark.parametrize("text,code,message", tiered([
    (None, 2, "config key experiments.vanilla.tuning.patiense: unknown key"),
    (None, 2, "config key targets.vanilla.grid.step: 'two' is not of type 'number'"),
    # not YAML at all: Snakemake reads --configfile before the workflow runs; its own one-line error
    ("models: [1,\n", 1, "Config file is not valid JSON or YAML"),
    ("models: {}\n\tseed: 1\n", 1, "Config file is not valid JSON or YAML"),
], slow={1, 2}))  # one schema error and one unreadable file in the fast tier
def test_bad_config_through_snakemake(tmp_path, text, code, message):
    """End to end: one error line naming the config file (ours) and what is wrong, no traceback,
    nothing written."""
    from .test_workflow import tiny_config

    if text is None:
        config = tiny_config({"llama": "l", "gpt2": "g"})
        if "patiense" in message:
            config["experiments"]["vanilla"]["tuning"] = {"patiense": 3}
        else:
            config["targets"]["vanilla"]["grid"]["step"] = "two"
        text = yaml.safe_dump(config)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    before = listing(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", str(path),
                           "-n"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert [p for p in listing(tmp_path) if not p.startswith(".snakemake")] == before
    if code == 2:
        errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
        assert len(errors) == 1 and errors[0].startswith(f"distreach: error: {path}: {message}"), proc.stderr
    else:
        assert message in proc.stdout + proc.stderr
