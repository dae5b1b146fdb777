"""Run the command-line examples of README.md and docs/api.md and write their real output there.

    .venv/bin/python scripts/readme_examples.py     # about 3 minutes on 2 cores

Runs every command of ``EXAMPLES`` in order, as a user types it, on the CPU (no GPU visible), in a
fresh temporary folder with a fresh model cache (so the first command's time includes converting the embedded model), and
keeps what each printed (stdout) and its seconds in ``docs/readme-examples.json`` with the
machine, the dtype ``auto`` picks on it and the package versions (the code's commit among them:
it refuses to run from a checkout whose code has uncommitted changes). Then it rewrites the parts of
the pages between ``<!-- readme-example NAME -->`` and ``<!-- end readme-example -->`` from that
file; tests/test_docs.py checks that the pages say what the file holds and that the file's
commands are these. A command that fails stops it before anything is written; the file and the
pages are each replaced whole (written beside, then renamed).
"""

import _repo  # noqa: F401  (this checkout's distreach)

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distreach.cli import BAD_INPUT

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "readme-examples.json"
PAGES = [REPO / "README.md", REPO / "docs" / "api.md"]
BIN = ".venv/bin/"  # how the pages name the project's commands
CAPITALS = """echo '{" Paris": 0.5, " London": 0.2, " Berlin": 0.1, " Rome": 0.1, " Madrid": 0.1}' > capitals.json"""
TUNE = f"{BIN}distreach tune --model smollm2 --target capitals.json"

# name -> (commands, style): "comment" shows the commands, then their output as # comments;
# "prompt" shows each command after "$ ", then its output; "errors" shows each command after "$ ",
# then what it printed to either stream, and each distreach command in it must stop with exit status 2
# (bad input), every other command (making its input) succeed
EXAMPLES = {
    "soft": ([CAPITALS, f"{TUNE} --method soft --inits 2 --out result.arrow"], "comment"),
    "gcg": ([f"{TUNE} --method gcg --inits 2 --out gcg.arrow"], "comment"),
    "hard": ([f"{TUNE} --method hard --inits 2 --out hard.arrow"], "comment"),
    "show": ([f"{BIN}distreach show result.arrow --init 0 --top 8"], "prompt"),
    "generate": ([f"{BIN}distreach generate result.arrow --target capitals --samples 3 --max-new-tokens 12"], "prompt"),
    "score": ([f'{BIN}distreach score --model smollm2 --target capitals.json --text "The capital of France is" '
               f'--text " Paris, London, Berlin, Rome or Madrid? The answer:" --top 6'], "prompt"),
    "errors": ([
        """echo '{" Pariss": 0.5, " London": 0.5}' > typo.json""",
        f"{TUNE.replace('capitals.json', 'typo.json')}",
        f"{BIN}python -c \"import numpy; numpy.save('p.npy', numpy.full((1, 5), 0.2))\"",
        f"{TUNE.replace('capitals.json', 'p.npy')}",
        f"{TUNE} --inits two",
    ], "errors"),
}
TABLES = {"soft": "result.arrow", "gcg": "gcg.arrow", "hard": "hard.arrow"}  # the rows each example tuned
BEGIN = "<!-- readme-example {} -->"
END = "<!-- end readme-example -->"
PART = re.compile(re.escape(BEGIN).replace(r"\{\}", r"(\w+)") + r"\n(.*?)\n" + re.escape(END), re.S)  # a generated part


def run_examples() -> dict:
    import polars as pl

    from distreach.io import package_versions
    from distreach.models import auto_dtype, machine

    versions = package_versions()
    if versions.get("distreach_commit", "").endswith("+dirty"):
        raise SystemExit("the code has uncommitted changes: commit them first, so the outputs name the code that made them")

    import distreach

    if Path(distreach.__file__).resolve().parents[1] != REPO:
        raise SystemExit(f"this Python's distreach is {Path(distreach.__file__).parent}, not this checkout's: "
                         f"run the examples with the checkout's own environment")
    binary = str(Path(sys.executable).parent) + "/"
    out = {}
    with tempfile.TemporaryDirectory() as work:  # on the CPU, as the recorded machine and dtype say
        env = {**os.environ, "DISTREACH_CACHE": str(Path(work) / "cache"), "CUDA_VISIBLE_DEVICES": ""}
        for name, (commands, _) in EXAMPLES.items():
            errors = EXAMPLES[name][1] == "errors"
            t0, printed, codes = time.perf_counter(), [], []
            for command in commands:
                done = subprocess.run(command.replace(BIN, binary), shell=True, cwd=work, env=env, text=True,
                                      capture_output=True)
                expected = BAD_INPUT if errors and command.startswith(f"{BIN}distreach") else 0
                codes.append(done.returncode)
                if done.returncode != expected:
                    raise SystemExit(f"{name}: {command!r} exited with {done.returncode}, not {expected}:\n{done.stderr}")
                printed.append(done.stdout + (done.stderr if errors else ""))
            out[name] = {"commands": commands, "output": "".join(printed), "seconds": round(time.perf_counter() - t0, 1)}
            if errors:
                out[name]["outputs"], out[name]["exit_statuses"] = printed, codes
            if name in TABLES:
                out[name]["dtypes"] = sorted(set(pl.read_ipc(Path(work) / TABLES[name])["dtype"]))
    return {"examples": out, "machine": machine(), "auto_dtype": auto_dtype("cpu"), "versions": versions}


def block(name: str, data: dict) -> str:
    """The Markdown code block of example ``name`` as recorded in ``data``."""
    ex, style = data["examples"][name], EXAMPLES[name][1]
    output = ex["output"].rstrip("\n").split("\n")
    if style == "comment":
        lines = ["```bash", *ex["commands"], *(f"# {line}" for line in output), "```"]
    elif style == "errors":
        lines = ["```", *(line for c, o in zip(ex["commands"], ex["outputs"]) for line in [f"$ {c}", *o.splitlines()]), "```"]
    else:
        lines = ["```", *(f"$ {c}" for c in ex["commands"]), *output, "```"]
    return "\n".join(lines)


def run_sentence(data: dict) -> str:
    """Where and how the recorded outputs were made."""
    m, ex = data["machine"], data["examples"]
    commit = data["versions"].get("distreach_commit")
    code = f"code at commit `{commit[:7]}`" if commit else f"distreach {data['versions'].get('distreach', '')} installed"
    kind = "with native bf16" if m["native_bf16"] else "without native bf16"
    retried = sorted({d for e in ex.values() for d in e.get("dtypes", [])} - {data["auto_dtype"]})
    return (f"The outputs shown are of one run of these commands in order (`.venv/bin/python scripts/readme_examples.py`, "
            f"recorded in `docs/readme-examples.json`, {code}) on {m['cores']} cores of {m['cpu']} ({kind}), where "
            f"`dtype: auto` is {data['auto_dtype']}" + (f" (rows retried in {', '.join(retried)} among them)" if retried else "")
            + f": soft {ex['soft']['seconds']:.0f} s (converting the embedded model once included), gcg "
            f"{ex['gcg']['seconds']:.0f} s, hard {ex['hard']['seconds']:.0f} s.")


def parts(data: dict) -> dict[str, str]:
    """Every generated part, by name: the examples' blocks and the sentence on the run."""
    return {**{name: block(name, data) for name in EXAMPLES}, "run": run_sentence(data)}


def rewrite(page: str, data: dict) -> str:
    """``page`` with each of its generated parts made from ``data``."""
    made = parts(data)

    def one(m: re.Match) -> str:
        name = m.group(1)
        if name not in made:
            raise SystemExit(f"unknown readme-example part {name!r}")
        return f"{BEGIN.format(name)}\n{made[name]}\n{END}"

    return PART.sub(one, page)


def page_parts(page: str) -> dict[str, str]:
    """The generated parts a page holds now, by name."""
    return {m.group(1): m.group(2) for m in PART.finditer(page)}


def main() -> None:
    if len(sys.argv) > 1:
        raise SystemExit(__doc__)
    from distreach.io import atomic_path

    data = run_examples()
    texts = {page: rewrite(page.read_text(), data) for page in PAGES}  # every page made before any is written
    for path, text in [(DATA, json.dumps(data, indent=1, ensure_ascii=False) + "\n"), *texts.items()]:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    print(f"wrote {DATA.relative_to(REPO)} and the examples of " + ", ".join(str(p.relative_to(REPO)) for p in PAGES))
    print(run_sentence(data))


if __name__ == "__main__":
    main()
