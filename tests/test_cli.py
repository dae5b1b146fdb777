"""The distreach CLI: a tune run end to end, and bad input of every kind failing with one clear
line (exit status 2, no traceback) before any work, with nothing written."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from distreach import cli
from distreach.errors import DistreachError
from distreach.io import read_arrow, write_arrow
from distreach.vanilla import EntropyGrid, VanillaSettings, vanilla_targets

from .conftest import TINY_WORDS, run_cli, tiered, tiny_cli_home

REPO = Path(__file__).resolve().parents[1]
V = 93  # the tiny tokenizer: 3 special tokens + 90 words


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny model folder, the model cache, and target files good and bad."""
    root = tmp_path_factory.mktemp("cli")
    with tiny_cli_home(root) as model:
        files = root / "in"
        files.mkdir()
        (root / "dir.arrow").mkdir()  # a folder where an output file is named

        def put(name, content):
            path = files / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            elif isinstance(content, np.ndarray):
                np.save(path, content, allow_pickle=True)
            else:
                path.write_text(content if isinstance(content, str) else json.dumps(content))
            return str(path)

        uniform = np.full(V, 1 / V)
        t = {
            "good.json": put("good.json", {"table": 0.5, "river": 0.3, "Paris": 0.2}),
            "nearly.json": put("nearly.json", {"table": 0.5, "river": 0.3, "Paris": 0.1995}),
            "empty.json": put("empty.json", ""),
            "broken.json": put("broken.json", "{not json"),
            "list.json": put("list.json", [0.5, 0.5]),
            "string.json": put("string.json", {"table": "half"}),
            "twice.json": put("twice.json", '{"table": 0.5, "river": 0.25, "table": 0.25}'),
            "unknown.json": put("unknown.json", {"table": 0.5, "zebra crossing": 0.5}),
            "negative.json": put("negative.json", {"table": 1.5, "river": -0.5}),
            "nan.json": put("nan.json", '{"table": NaN, "river": 1.0}'),
            "sum.json": put("sum.json", {"table": 0.25, "river": 0.25}),
            "target.csv": put("target.csv", "table,1.0"),
            "short.npy": put("short.npy", np.full(5, 0.2)),
            "nan.npy": put("nan.npy", np.where(np.arange(V) == 3, np.nan, uniform)),
            "negative.npy": put("negative.npy", np.where(np.arange(V) == 0, -0.1, uniform)),
            "logprobs.npy": put("logprobs.npy", np.log(uniform)),
            "logprobs-zero.npy": put("logprobs-zero.npy", np.where(np.arange(V) == 0, -np.inf, np.log(1 / (V - 1)))),
            "sum.npy": put("sum.npy", uniform * 3),
            "object.npy": put("object.npy", np.array([{"a": 1}], dtype=object)),
            "garbage.arrow": put("garbage.arrow", b"\x00\x01 not arrow"),
            "no-columns.arrow": put("no-columns.arrow", b""),
            "missing.json": str(files / "missing.json"),
        }
        write_arrow(vanilla_targets(50, EntropyGrid(step=4.0), VanillaSettings(per_level=1)), files / "v50.arrow")
        t["v50.arrow"] = str(files / "v50.arrow")
        write_arrow(vanilla_targets(V, EntropyGrid(step=2.0), VanillaSettings(per_level=1)), files / "levels.arrow")
        t["levels.arrow"] = str(files / "levels.arrow")
        two = vanilla_targets(V, EntropyGrid(step=4.0), VanillaSettings(per_level=1))
        write_arrow(two.set_column(0, "target_id", pa.array(["x", "y", "x"][:two.num_rows])), files / "dup.arrow")
        t["dup.arrow"] = str(files / "dup.arrow")
        write_arrow(vanilla_targets(50, EntropyGrid(step=4.0), VanillaSettings(per_level=1)), files / "g50.arrow",
                    {"model": "gemma3"})
        t["g50.arrow"] = str(files / "g50.arrow")
        write_arrow(pa.table({"target_id": ["a"], "init_index": [0], "kl_min": [1.0]}), files / "result.arrow")
        t["result.arrow"] = str(files / "result.arrow")
        t["empty.npy"] = put("empty.npy", np.zeros((0, V)))
        t["scalar.npy"] = put("scalar.npy", np.array(0.5))
        write_arrow(pa.table({"target_id": ["a"]}), files / "cols.arrow")
        t["cols.arrow"] = str(files / "cols.arrow")
        (root / "noconfig").mkdir()
        (root / "bad.gguf").write_bytes(b"GGUX" + bytes(100))
        yield {"model": str(model), "t": t, "root": root}


run = run_cli


def test_tune_with_a_json_target_end_to_end(env, capsys, tmp_path):
    out = tmp_path / "r.arrow"
    code, stdout, err = run(capsys, "tune", "--model", env["model"], "--target", env["t"]["good.json"], "--inits", "2",
                            "--max-steps", "8", "--out", str(out), "--quiet")
    assert code == 0, err
    assert "good: kl_min" in stdout and "achieved" in stdout and f"wrote 2 rows to {out}" in stdout
    table = read_arrow(out)
    assert table.num_rows == 2 and set(table.column("init_index").to_pylist()) == {0, 1}
    assert "distreach" in (table.schema.metadata or {}).get(b"distreach", b"").decode()  # provenance


@pytest.mark.parametrize("method", [["hard"], ["gcg", "--gcg-width", "4", "--gcg-topk", "8"]])
def test_hard_prompt_summary_shows_the_prompt(env, capsys, tmp_path, method):
    """The summary line shows the text of the best init's hard prompt: its tokens' words, as the
    tokenizer decodes them together (this one puts spaces between words), and that text typed
    back in gives the row's KL."""
    out = tmp_path / "h.arrow"
    code, stdout, err = run(capsys, "tune", "--model", env["model"], "--target", env["t"]["good.json"], "--method",
                            *method, "--inits", "3", "--max-steps", "4", "--out", str(out), "--quiet")
    assert code == 0, err
    rows = read_arrow(out).to_pylist()
    best = min(rows, key=lambda r: r["kl_min"])
    assert len(best["prompt_ids"]) == 5 and len({r["kl_min"] for r in rows}) == 3
    words = [TINY_WORDS[i - 3] for i in best["prompt_ids"]]  # ids 0-2 are <unk>, <bos>, <eos>
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("good: ")]
    assert line.endswith(f"; best prompt {' '.join(words)!r} (its text typed back in gives {best['kl_roundtrip']:.4g} bits)"), line
    assert best["kl_roundtrip"] == pytest.approx(best["kl_min"], rel=1e-5)


def test_nearly_normalised_target_is_renormalised_and_logged(env, capsys, caplog):
    caplog.set_level("INFO")
    code, stdout, err = run(capsys, "tune", "--model", env["model"], "--target", env["t"]["nearly.json"], "--inits", "1",
                            "--max-steps", "3")
    assert code == 0, err
    assert "probabilities sum to 0.9995; renormalised" in caplog.text
    from distreach.api import load_model
    from distreach.targetfiles import read_target

    table = read_target(env["t"]["nearly.json"], load_model(env["model"], device="cpu"))  # the table the tuning read
    p = np.exp(np.asarray(table.column("logprobs")[0].as_py(), dtype=np.float64))
    assert abs(p.sum() - 1) < 1e-6
    np.testing.assert_allclose(sorted(p[p > 0]), np.array([0.1995, 0.3, 0.5]) / 0.9995, rtol=1e-5)


def test_target_then_tune(env, capsys, tmp_path):
    out = tmp_path / "o.arrow"
    code, stdout, err = run(capsys, "target", "outlier", "--model", env["model"], "--entropy", "3", "--k", "2", "--n", "2",
                            "--out", str(out))
    assert code == 0, err
    assert f"wrote 2 outlier target(s) over 93 tokens to {out}" in stdout
    assert stdout.rstrip().endswith(" bits; ids outlier-3bits-k2-s0-0 .. outlier-3bits-k2-s0-1"), stdout
    assert read_arrow(out).column("n_outliers").to_pylist() == [2, 2]
    assert read_arrow(out).column("target_id").to_pylist() == ["outlier-3bits-k2-s0-0", "outlier-3bits-k2-s0-1"]
    code, stdout, err = run(capsys, "tune", "--model", env["model"], "--target", str(out), "--inits", "1", "--max-steps", "3", "-q")
    assert code == 0 and stdout.count("kl_min") == 2
    # a table in nats is tuned in nats, unless --unit asks for bits: its entropies are then converted
    code, _, err = run(capsys, "target", "outlier", "--model", env["model"], "--entropy", "3", "--k", "2", "--unit", "nats",
                       "--out", str(out))
    assert code == 0, err
    for unit, entropy in ((None, "3 nats"), ("nats", "3 nats"), ("bits", f"{3 / math.log(2):.4g} bits")):
        code, stdout, err = run(capsys, "tune", "--model", env["model"], "--target", str(out), "--inits", "1", "--max-steps",
                                "3", "-q", *(["--unit", unit] if unit else []))
        assert code == 0 and f"(asked for {entropy.split()[0]}), achieved " in stdout and "(min over 1 init); " in stdout
        assert f" {entropy.split()[1]}; stopped at the step limit (3 steps: --max-steps, or tuning.max_steps in a config): more may lower its KL\n" in stdout


def test_target_id_keeps_the_named_targets_of_the_file_in_its_order(env, capsys, tmp_path):
    """tune and score take only the targets --target-id names (in the file's order, each once),
    with the numbers they give as part of the whole file."""
    levels, ids = env["t"]["levels.arrow"], ["vanilla-L003-r0", "vanilla-L001-r0", "vanilla-L003-r0"]
    picked = [a for i in ids for a in ("--target-id", i)]
    code, stdout, err = run(capsys, "tune", "--model", env["model"], "--target", levels, *picked, "--inits", "1",
                            "--max-steps", "3", "--out", str(tmp_path / "some.arrow"), "-q")
    assert code == 0, err
    assert read_arrow(tmp_path / "some.arrow").column("target_id").to_pylist() == ["vanilla-L001-r0", "vanilla-L003-r0"]
    code, stdout, err = run(capsys, "score", "--model", env["model"], "--target", levels, *picked, "--text", "river")
    assert code == 0, err
    some = [ln for ln in stdout.splitlines() if ln.startswith("vanilla-")]
    code, stdout, err = run(capsys, "score", "--model", env["model"], "--target", levels, "--text", "river")
    assert code == 0, err
    every = [ln for ln in stdout.splitlines() if ln.startswith("vanilla-")]
    assert len(every) == 5 and some == [every[1], every[3]]


def test_stop_kl_nats_stops_the_rows_that_reach_it(env, capsys, tmp_path):
    """--stop-kl-nats as the config's tuning.stop_kl_nats: a row whose KL reaches it stops there;
    without it (the paper's 0) rows run to the step limit."""
    for stop, reason in ((None, "step cap"), ("100", "target reached")):
        out = tmp_path / f"{reason}.arrow"
        code, _, err = run(capsys, "tune", "--model", env["model"], "--target", env["t"]["good.json"], "--inits", "2",
                           "--max-steps", "6", "--out", str(out), "-q", *(["--stop-kl-nats", stop] if stop else []))
        assert code == 0, err
        rows = read_arrow(out).to_pylist()
        assert [r["stop_reason"] for r in rows] == [reason] * 2
        assert [r["steps"] for r in rows] == ([6, 6] if stop is None else [1, 1])


def test_models_lists_the_embedded_ones(capsys):
    code, stdout, _ = run(capsys, "models")
    assert code == 0 and "smollm2" in stdout and "gemma3" in stdout and "org/name" in stdout


BAD = [
    # (argv with {model}, {t:<name>}, {root}; expected message)
    (["tune", "--target", "{t:good.json}"], "the following arguments are required: --model"),
    (["tune", "--model", "{model}"], "the following arguments are required: --target"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--method", "magic"], "argument --method: invalid choice: 'magic'"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--prefix-len", "0"], "argument --prefix-len: '0' must be positive"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--inits", "two"], "argument --inits: 'two' is not an integer"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--lr", "nan"], "argument --lr: 'nan' must be positive"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (["tune", "--model", "nosuch", "--target", "{t:good.json}"], "--model nosuch: not an embedded model (smollm2, gemma3)"),
    (["tune", "--model", "{root}/missing", "--target", "{t:good.json}"], "/missing: not a model folder or a .gguf file"),
    (["tune", "--model", "{root}/noconfig", "--target", "{t:good.json}"], "folder has no config.json"),
    (["tune", "--model", "{root}/none.gguf", "--target", "{t:good.json}"], "none.gguf: no such GGUF file"),
    (["tune", "--model", "{root}/bad.gguf", "--target", "{t:good.json}"], "bad.gguf: not a GGUF file, or a truncated or corrupt one"),
    (["tune", "--model", "{model}", "--target", "{t:missing.json}"], "missing.json: no such file"),
    (["tune", "--model", "{model}", "--target", "{t:empty.json}"], "empty.json: the file is empty"),
    (["tune", "--model", "{model}", "--target", "{t:broken.json}"], "broken.json: not valid JSON"),
    (["tune", "--model", "{model}", "--target", "{t:list.json}"], 'list.json: expected a non-empty object {"token string": probability}'),
    (["tune", "--model", "{model}", "--target", "{t:string.json}"], "string.json: token 'table' has probability 'half', not a number"),
    (["tune", "--model", "{model}", "--target", "{t:twice.json}"], "twice.json: token 'table' is given twice"),
    (["tune", "--model", "{model}", "--target", "{t:unknown.json}"], "unknown.json: 1 string is not a single token of this model: 'zebra crossing'"),
    (["tune", "--model", "{model}", "--target", "{t:negative.json}"], "negative.json: token 'river' has a negative probability (-0.5)"),
    (["tune", "--model", "{model}", "--target", "{t:nan.json}"], "nan.json: token 'table' has probability nan (NaN or infinite)"),
    (["tune", "--model", "{model}", "--target", "{t:sum.json}"], "sum.json: probabilities sum to 0.5, not 1"),
    (["tune", "--model", "{model}", "--target", "{t:target.csv}"], "target.csv: unknown format .csv; use .arrow, .npy or .json"),
    (["tune", "--model", "{model}", "--target", "{t:short.npy}"], "short.npy: shape (5,), expected [93] or [n, 93]"),
    (["tune", "--model", "{model}", "--target", "{t:nan.npy}"], "nan.npy row 0: entry 3 is nan (NaN or infinite)"),
    (["tune", "--model", "{model}", "--target", "{t:negative.npy}"], "negative.npy row 0: entry 0 is negative"),
    (["tune", "--model", "{model}", "--target", "{t:sum.npy}"], "sum.npy row 0: probabilities sum to 3, not 1"),
    (["tune", "--model", "{model}", "--target", "{t:object.npy}"], "object.npy: not a plain numeric .npy array"),
    (["tune", "--model", "{model}", "--target", "{t:garbage.arrow}"], "garbage.arrow: not a readable Arrow IPC file"),
    (["tune", "--model", "{model}", "--target", "{t:no-columns.arrow}"], "no-columns.arrow: the file is empty"),
    (["tune", "--model", "{model}", "--target", "{t:cols.arrow}"], "cols.arrow: missing target column(s) kind"),
    (["tune", "--model", "{model}", "--target", "{t:v50.arrow}"], "v50.arrow: targets have 50 entries but the model's vocabulary has 93"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--out", "{root}/r.csv"], "--out {root}/r.csv: the result file must end in .arrow"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--n-soft", "2"], "--n-soft is for --method hybrid only"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--gcg-width", "8"], "--gcg-width, --gcg-topk, --gcg-replace and --unreadable are for --method gcg only"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--method", "hybrid", "--n-soft", "9"], "error: --n-soft: must be in 0..5 (got 9)"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--device", "cuda:99"], "device 'cuda:99' requested but "),
    (["target", "vanilla", "--model", "{model}", "--entropy", "-1", "--out", "{root}/t.arrow"], "argument --entropy: '-1' must be a finite number >= 0"),
    (["target", "vanilla", "--model", "{model}", "--entropy", "inf", "--out", "{root}/t.arrow"], "argument --entropy: 'inf' must be a finite number >= 0"),
    (["target", "vanilla", "--model", "{model}", "--entropy", "9", "--out", "{root}/t.arrow"], "--entropy 9.0: must be within 0..6.539 bits"),
    (["target", "outlier", "--model", "{model}", "--entropy", "2", "--k", "0", "--out", "{root}/t.arrow"], "argument --k: '0' must be positive"),
    (["target", "uniform", "--model", "{model}", "--entropy", "2", "--out", "{root}/t.arrow"], "argument kind: invalid choice: 'uniform'"),
    (["target", "vanilla", "--model", "{model}", "--entropy", "2", "--out", "{root}/t.txt"], "--out {root}/t.txt: the target file must end in .arrow"),
    (["nonsense"], "invalid choice: 'nonsense' (choose from 'tune', 'score', 'show', 'generate', 'target', 'models')"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--device", "tpu"],
     "argument --device: 'tpu' is not a device: auto, cpu, cuda or cuda:N"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--out", "{root}/dir.arrow"], "--out {root}/dir.arrow: is a folder"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--out", "/proc/r.arrow"], "--out /proc/r.arrow: cannot write in /proc"),
    (["target", "vanilla", "--model", "{model}", "--entropy", "2", "--out", "{root}/dir.arrow"], "--out {root}/dir.arrow: is a folder"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--method", "gcg", "--lr", "0.5"],
     "--lr is the learning rate of soft positions; this gcg prompt has none"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--method", "hard", "--lr", "0.5"],
     "--lr is the learning rate of soft positions; this hard prompt has none"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--method", "hybrid", "--n-soft", "0", "--lr", "0.5"],
     "--lr is the learning rate of soft positions; this hybrid prompt has none"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--method", "hybrid", "--prefix-len", "1"],
     "--method hybrid: a prompt of --prefix-len 1 is all soft or all hard: use --method soft or hard"),
    (["tune", "--model", "{model}", "--target", "{t:logprobs.npy}"],
     "); these look like log-probabilities: give their exp"),  # entry 0 is negative (-4.5...)
    (["tune", "--model", "{model}", "--target", "{t:logprobs-zero.npy}"],
     "logprobs-zero.npy row 0: entry 0 is -inf (NaN or infinite); these look like log-probabilities: give their exp"),
    (["score", "--model", "{model}", "--target", "{t:good.json}"], "the following arguments are required: --text"),
    (["score", "--model", "{model}", "--target", "{t:missing.json}", "--text", "a"], "--target {root}/in/missing.json: no such file"),
    (["score", "--model", "{model}", "--target", "{t:good.json}", "--text", "river", "--text", "", "--bos", "none"],
     "text '': no tokens, and no BOS token before it (bos policy none): nothing to feed the model"),
    # score checks what tune checks before the model is converted or loaded
    (["score", "--model", "{model}", "--target", "{t:unknown.json}", "--text", "a"], "unknown.json: 1 string is not a single token"),
    (["score", "--model", "{model}", "--target", "{t:short.npy}", "--text", "a"], "short.npy: shape (5,), expected [93] or [n, 93]"),
    (["score", "--model", "{model}", "--target", "{t:v50.arrow}", "--text", "a"], "v50.arrow: targets have 50 entries but the model's vocabulary has 93"),
    (["score", "--model", "{model}", "--target", "{t:good.json}", "--text", "a", "--top", "0"], "argument --top: '0' must be positive"),
    # an embedded model's first use has no tokenizer to read yet: an empty text with no BOS is refused all the same
    (["score", "--model", "smollm2", "--target", "{t:good.json}", "--text", "", "--bos", "none"],
     "text '': no tokens, and no BOS token before it (bos policy none): nothing to feed the model"),
    # --target-id names a target the file does not hold: refused before the model is loaded, the file's ids listed
    (["tune", "--model", "{model}", "--target", "{t:levels.arrow}", "--target-id", "vanilla-L001-r0", "--target-id", "nosuch"],
     "--target {root}/in/levels.arrow: no target 'nosuch'; its targets: vanilla-L000-r0, vanilla-L001-r0, vanilla-L002-r0, "
     "vanilla-L003-r0, vanilla-L004-r0"),
    (["score", "--model", "{model}", "--target", "{t:good.json}", "--target-id", "bad", "--text", "a"],
     "--target {root}/in/good.json: no target 'bad'; its targets: good"),
    (["tune", "--model", "{model}", "--target", "{t:empty.npy}"], "empty.npy: shape (0, 93): no targets in the file"),
    (["tune", "--model", "{model}", "--target", "{t:scalar.npy}"], "scalar.npy: shape (), expected [93] or [n, 93]"),
    (["tune", "--model", "{model}", "--target", "{t:dup.arrow}"],
     "dup.arrow: target id 'x' is given 2 times (results are kept and compared by target id)"),
    (["tune", "--model", "{model}", "--target", "{t:result.arrow}"], "result.arrow: a result table (of a tuning), not a target table"),
    (["tune", "--model", "{model}", "--target", "{t:g50.arrow}"],
     "g50.arrow: targets have 50 entries but the model's vocabulary has 93 (the file's targets were made for model gemma3)"),
    (["tune", "--model", "{model}", "--target", "{root}/dir.arrow"], "--target {root}/dir.arrow: a folder, not a target file"),
    (["tune", "--model", "{model}", "--target", "{t:levels.arrow}", "--out", "{t:levels.arrow}"],
     "--out {root}/in/levels.arrow: is the --target file; the results would overwrite the targets"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--seed", "-1"], "argument --seed: '-1' must be >= 0"),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--stop-kl-nats", "-1"],
     "argument --stop-kl-nats: '-1' must be a finite number >= 0"),
    (["target", "vanilla", "--model", "{model}", "--entropy", "2", "--k", "3", "--out", "{root}/t.arrow"],
     "--k is for outlier targets only (a vanilla target has no outlier tokens)"),
    # an uncached Hugging Face id (no vocabulary to read yet): an .arrow file's own faults before any download
    (["tune", "--model", "nosuch-org/nosuch-model", "--target", "{t:dup.arrow}"], "dup.arrow: target id 'x' is given 2 times"),
    (["score", "--model", "nosuch-org/nosuch-model", "--target", "{t:levels.arrow}", "--target-id", "zzz", "--text", "a"],
     "levels.arrow: no target 'zzz'; its targets: vanilla-L000-r0, "),
    (["tune", "--model", "{model}", "--target", "{t:good.json}", "--method", "gcg", "--gcg-replace", "6"],
     "--gcg-replace: a candidate cannot change more positions than the prompt's 5 (got 6)"),
    # ... and a .npy or .json file's faults that need no vocabulary, before any download too
    (["tune", "--model", "nosuch-org/nosuch-model", "--target", "{t:nan.npy}"],
     "--target {root}/in/nan.npy row 0: entry 3 is nan (NaN or infinite)"),
    (["tune", "--model", "nosuch-org/nosuch-model", "--target", "{t:scalar.npy}"], "scalar.npy: shape (), expected [V] or [n, V]"),
    (["tune", "--model", "nosuch-org/nosuch-model", "--target", "{t:sum.json}"], "sum.json: probabilities sum to 0.5, not 1"),
    (["score", "--model", "nosuch-org/nosuch-model", "--target", "{t:good.json}", "--target-id", "zzz", "--text", "a"],
     "good.json: no target 'zzz'; its targets: good"),
]


def listing(*folders):
    """Every path under the folders (recursive), with file sizes: what a run wrote shows here."""
    return {str(p): (p.stat().st_size if p.is_file() else -1) for d in folders for p in sorted(d.rglob("*"))}


# each case is a new process (a few seconds): the fast tier keeps one case of each kind of fault (a
# target file's of each format, a flag's range, a check before a model is at hand), the whole suite runs them all
SLOW_CASES = {*range(15, 22), *range(23, 27), *range(28, 31), 65, 67, 68, 69, 71, 72, 75, 78, 79, 80}


@pytest.mark.parametrize("argv,message", tiered(BAD, SLOW_CASES, ids=[f"{i:02d}-{m[:40]}" for i, (_, m) in enumerate(BAD)]))
def test_bad_input_is_one_clear_line_and_writes_nothing(env, tmp_path, argv, message):
    def fill(s):
        if s.startswith("{t:"):
            return env["t"][s[3:-1]]
        return s.replace("{model}", env["model"]).replace("{root}", str(env["root"]))

    argv = [fill(a) for a in argv]
    message = fill(message)
    cache, cwd = tmp_path / "cache", tmp_path / "cwd"
    cache.mkdir()
    cwd.mkdir()
    run_env = {**os.environ, "DISTREACH_CACHE": str(cache),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    before = listing(cache, cwd, env["root"])
    proc = subprocess.run([sys.executable, "-m", "distreach.cli", *argv], cwd=cwd, env=run_env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr  # one line: no INFO line, no warning, no traceback
    assert message in lines[0] and "error: " in lines[0]
    assert listing(cache, cwd, env["root"]) == before  # no output, no cache entry, no temp files


def test_output_read_by_a_reader_that_stops_early_is_no_error(env):
    """``distreach models | head -0``: the closed pipe ends the command quietly, exit status 0."""
    run_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "distreach.cli", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=run_env)
    proc.stdout.close()  # the reader goes away before the command writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.parametrize("kind", ["embedded", "gguf"])
def test_a_target_of_the_wrong_length_is_refused_before_the_model_is_converted(tmp_path, kind):
    """With an empty cache, an embedded model (vocabulary size from its registry entry) or a .gguf
    file (from the file's tensor metadata) is not converted to find that a 7-entry target does not
    fit: exit 2, one line naming the file and the length expected, the cache folder left empty."""
    from distreach.embedded import EMBEDDED

    from .conftest import write_tiny_gguf

    if kind == "embedded":
        model, v, name = "smollm2", EMBEDDED["smollm2"]["vocab_size"], "smollm2"
    else:
        model, name = str(tmp_path / "tiny.gguf"), "tiny"
        v = len(write_tiny_gguf(model))
    target = tmp_path / "short.npy"
    np.save(target, np.full(7, 1 / 7))
    cache = tmp_path / "cache"
    cache.mkdir()
    run_env = {**os.environ, "DISTREACH_CACHE": str(cache),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "distreach.cli", "tune", "--model", model, "--target", str(target)],
                          cwd=tmp_path, env=run_env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"distreach: error: --target {target}: shape (7,), expected [{v}] or [n, {v}] for model {name}"]
    assert listing(cache) == {}  # nothing converted, nothing written


def test_target_file_errors_are_about_the_data_and_the_cli_names_the_flag(env, capsys):
    from distreach.targetfiles import check_target_path

    missing = env["t"]["missing.json"]
    with pytest.raises(DistreachError) as exc:
        check_target_path(missing)
    assert str(exc.value) == f"{missing}: no such file"
    assert cli.main(["tune", "--model", env["model"], "--target", env["t"]["sum.json"]]) == 2
    assert f"distreach: error: --target {env['t']['sum.json']}: probabilities sum to 0.5, not 1" in capsys.readouterr().err


def test_the_typed_back_kl_is_the_rows_round_trip_kl_and_only_where_there_is_one():
    row = {"kl_min": 1.333, "kl_roundtrip": 1.38637}
    assert cli._typed_back(row, "bits") == " (its text typed back in gives 1.386 bits)"
    assert cli._typed_back({"kl_min": 1.0, "kl_roundtrip": float("nan")}, "bits") == ""  # soft positions: no such text
    assert cli._typed_back({"kl_min": 1.0}, "nats") == ""  # a table from before the column


@pytest.mark.parametrize("method,patience", [("hard", None), ("gcg", None), ("gcg", "3")])
def test_tune_runs_with_the_methods_own_patience_unless_one_is_given(env, capsys, tmp_path, method, patience):
    from distreach.settings import GCG_PATIENCE, PATIENCE
    from distreach.io import arrow_metadata

    out = tmp_path / "p.arrow"
    given = ["--patience", patience] if patience else []
    code, _, err = run(capsys, "tune", "--model", env["model"], "--target", env["t"]["good.json"], "--method", method,
                       *given, "--max-steps", "2", "--out", str(out), "--quiet")
    assert code == 0, err
    want = int(patience) if patience else (GCG_PATIENCE if method == "gcg" else PATIENCE)
    assert arrow_metadata(read_arrow(out))["tuning"]["patience"] == want


@pytest.mark.parametrize("console", [False, True])
def test_only_the_console_command_sets_the_processes_memory_use(env, capsys, tmp_path, monkeypatch, console):
    """``distreach tune`` run as its own process on the CPU has large tensors reuse freed memory
    (distreach.models.reuse_freed_memory, process-wide); cli.main called with arguments, in
    another program's process, leaves that process's malloc alone."""
    import sys

    from distreach import cli, models

    calls = []
    monkeypatch.setattr(models, "reuse_freed_memory", lambda device: calls.append(device) or True)
    argv = ["tune", "--model", env["model"], "--target", env["t"]["good.json"], "--max-steps", "2",
            "--out", str(tmp_path / "p.arrow"), "--quiet"]
    if console:
        monkeypatch.setattr(sys, "argv", ["distreach", *argv])
    code = cli.main(None if console else argv)
    assert code == 0, capsys.readouterr().err
    assert calls == (["cpu"] if console else [])


def test_the_cli_takes_the_devices_the_workflow_takes():
    """--device and the config's device: one pattern (the schema's, anchored)."""
    import yaml

    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["device"]["pattern"] == f"^({cli.DEVICE})$"


def test_target_with_an_empty_cache_converts_the_model_and_makes_the_same_target(tmp_path, capsys, monkeypatch):
    """A .gguf model not yet converted (its vocabulary size known, its tokenizer not): ``target``
    converts it for the tokenizer (which rows are tokens, which are usable outliers) and writes the
    target a converted model gives."""
    from distreach import api

    from .conftest import write_tiny_gguf

    model = str(tmp_path / "tiny.gguf")
    write_tiny_gguf(model)
    monkeypatch.setenv("DISTREACH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(api, "load_model", lambda *a, **kw: pytest.fail("the model's weights loaded for a target"))
    make, tokenizers = api.make_target, []
    monkeypatch.setattr(api, "make_target", lambda *a, **kw: tokenizers.append(kw["tokenizer"]) or make(*a, **kw))
    tables = []
    for name in ("first", "again"):  # an empty cache, then the converted model's
        out = tmp_path / f"{name}.arrow"
        code, stdout, err = run(capsys, "target", "outlier", "--model", model, "--entropy", "2", "--k", "2", "--out", str(out))
        assert code == 0 and stdout.startswith("wrote 1 outlier target(s) over "), err
        tables.append(read_arrow(out).select(["target_id", "logprobs", "achieved_entropy"]))
    assert tables[0].equals(tables[1]) and None not in tokenizers


@pytest.mark.parametrize("quiet,verbosity", [(False, None), (True, None), (False, "warning"), (False, "hub-error")])
def test_library_messages_come_once_and_not_with_quiet(quiet, verbosity):
    """A hub download's retry warning reaches the user once, through distreach's handler (none with
    -q); transformers' warnings do not, unless TRANSFORMERS_VERBOSITY asks for them."""
    code = ("import logging, sys; from distreach import cli; cli.main(['models'" + (", '-q'" if quiet else "") + "]); "
            "import huggingface_hub.utils.logging as h; from transformers.utils import logging as t; "
            "h.get_logger('huggingface_hub.utils._http').warning('Retrying in 1s'); "
            "t.get_logger('transformers.modeling_utils').warning('a transformers warning')")
    run_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run_env.pop("TRANSFORMERS_VERBOSITY", None)
    run_env.pop("HF_HUB_VERBOSITY", None)
    if verbosity == "hub-error":  # huggingface_hub's own variable: errors only
        run_env["HF_HUB_VERBOSITY"] = "error"
    elif verbosity:
        run_env["TRANSFORMERS_VERBOSITY"] = verbosity
    err = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True).stderr
    hub = [] if quiet or verbosity == "hub-error" else ["distreach: Retrying in 1s"]
    assert err.splitlines() == hub + (["distreach: a transformers warning"] if verbosity == "warning" else [])


def test_entropies_of_a_row_read_as_the_target_made_what_was_asked_and_q():
    from distreach.cli import _entropies

    row = {"target_entropy_achieved": 5.993, "target_entropy": 6.0, "q_entropy": 7.25}
    assert _entropies(row, "bits") == "entropy target 5.993 (asked for 6), achieved 7.25 bits"
    assert _entropies({**row, "target_entropy": 5.993}, "bits") == "entropy target 5.993, achieved 7.25 bits"
    # a user's target table may leave its entropies null
    assert _entropies({**row, "target_entropy": None, "target_entropy_achieved": float("nan")}, "nats") == \
        "entropy target -, achieved 7.25 nats"
    assert _entropies({**row, "target_entropy": None}, "bits") == "entropy target 5.993, achieved 7.25 bits"
