"""Static checks of the per-rule conda envs (conda channels are not reachable where tests run):
every rule declares a log and an env, each env pins its packages, and each env provides every
third-party package imported by the code its rule runs (script + the distreach modules it reaches)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from distreach.codeinfo import closure

REPO = Path(__file__).resolve().parents[1]
RULE = re.compile(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", re.S | re.M)
# import name -> distribution name, where they differ
DISTRIBUTION = {"yaml": "pyyaml", "vl_convert": "vl-convert-python", "sklearn": "scikit-learn"}
# packages a library loads without our code importing them
RUNTIME = {"altair": {"vl-convert-python"}, "transformers": {"safetensors", "tokenizers"}}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def directive(body: str, name: str) -> str | None:
    m = re.search(rf"^\s+{name}:\n\s+\"([^\"]+)\"", body, re.M)
    return m.group(1) if m else None


def rules() -> dict[str, str]:
    out = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for name, body in RULE.findall(smk.read_text()):
            out[name] = body
    return out


def project_requirements(extras: list[str]) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    todo = list(extras)
    while todo:
        extra = todo.pop()
        for r in project["optional-dependencies"][extra]:
            m = re.match(r"distreach\[(.*)\]", r)
            if m:
                todo += m.group(1).split(",")
            else:
                reqs.append(r)
    return {norm(re.split(r"[<>=!~ \[;]", r)[0]) for r in reqs}


def env_packages(path: Path) -> tuple[set[str], dict]:
    env = yaml.safe_load(path.read_text())
    pkgs = set()
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            pkgs.add(norm(re.split(r"[<>=! ]", dep)[0]))
            continue
        for line in dep["pip"]:
            if line.startswith("-e "):
                m = re.match(r"-e \.\.(?:\[(.*)\])?$", line)
                assert m, f"{path.name}: editable install must be the project itself: {line}"
                pkgs |= project_requirements(m.group(1).split(",") if m.group(1) else [])
                pkgs.add("distreach")
            elif line.startswith("https://"):
                pkgs.add(norm(Path(line).name.split("-")[0]))
            else:
                assert "==" in line, f"{path.name}: {line} is not pinned"
                pkgs.add(norm(line.split("==")[0]))
    return pkgs, env


ALL_RULES = rules()
RUN_NOTHING = ("all", "not_drawn")  # rules with no job: the targets; a request refused while planning


def test_every_rule_has_log_and_conda_env():
    assert {"materialise_model", "pos_tag", "tune_job", "collect", "figure", "claims"} <= set(ALL_RULES)
    for name, body in ALL_RULES.items():
        if name in RUN_NOTHING:
            assert not re.search(r"^\s+(script|shell|run|wrapper):", body, re.M), f"rule {name} runs something"
            continue
        assert directive(body, "conda"), f"rule {name} has no conda env"
        assert re.search(r"^\s+log:", body, re.M), f"rule {name} has no log"
        assert (REPO / "rules" / directive(body, "conda")).is_file(), name
        # its rerun trigger is the import closure of the script it runs
        script = Path(directive(body, "script")).stem
        assert f'code=script_code("{script}")' in body, f"rule {name}: code param is not script_code({script!r})"


@pytest.mark.parametrize("env", sorted(p.name for p in (REPO / "envs").glob("*.yaml")))
def test_env_is_pinned_on_conda_forge(env):
    pkgs, spec = env_packages(REPO / "envs" / env)
    assert spec["channels"] == ["conda-forge", "nodefaults"]
    assert "python" in pkgs


def test_scripts_find_distreach_without_installing_it():
    """Under --sdm conda a rule's env has no distreach: each script imports scripts/_repo.py
    first, which puts this checkout on the path when distreach is not installed."""
    import subprocess
    import sys

    for script in sorted((REPO / "scripts").glob("*.py")):
        if script.name == "_repo.py":
            continue
        body = [ln for ln in script.read_text().splitlines() if ln.startswith(("import ", "from "))]
        assert body[0].startswith("import _repo"), script.name
    probe = "import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]; import _repo, distreach; print(distreach.__file__)"
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=REPO / "scripts", capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO / "scripts")})
    assert out.returncode == 0 and out.stdout.strip() == str(REPO / "distreach" / "__init__.py"), out.stderr


@pytest.mark.parametrize("rule", sorted(r for r in ALL_RULES if r not in RUN_NOTHING))
def test_env_provides_every_import_of_the_rule(rule):
    body = ALL_RULES[rule]
    script = REPO / "rules" / directive(body, "script")
    env = REPO / "rules" / directive(body, "conda")
    pkgs, _ = env_packages(env)
    _, imports = closure([script])
    needed = {norm(DISTRIBUTION.get(m, m)) for m in imports}
    for m in list(imports):
        needed |= RUNTIME.get(m, set())
    missing = sorted(needed - pkgs)
    assert not missing, f"rule {rule}: {env.name} lacks {missing}"


def test_pos_env_keeps_numpy_below_2_and_torch_out():
    pkgs, spec = env_packages(REPO / "envs" / "pos.yaml")
    pins = {norm(line.split("==")[0]): line.split("==")[1] for line in spec["dependencies"][-1]["pip"] if "==" in line}
    assert int(pins["numpy"].split(".")[0]) < 2 and "scispacy" in pkgs
    assert "torch" not in pkgs and "transformers" not in pkgs


def test_install_refuses_a_python_older_than_3_11_before_making_anything(tmp_path):
    """install.sh checks the interpreter before it makes .venv: an older Python gets one line naming it."""
    import shutil
    import stat
    import subprocess

    shutil.copy(REPO / "install.sh", tmp_path / "install.sh")
    old = tmp_path / "python3.10"
    # a Python that says it is 3.10 to the code it is given with -c, and fails at anything else
    old.write_text('#!/bin/sh\n[ "$1" = -c ] || exit 3\n'
                   'exec python3 -c "import sys; sys.version_info = (3, 10, 0); exec(sys.argv[1])" "$2"\n')
    old.chmod(old.stat().st_mode | stat.S_IEXEC)
    install = lambda python: subprocess.run(["bash", str(tmp_path / "install.sh")],  # noqa: E731
                                            env={"PATH": "/usr/bin:/bin", "PYTHON": str(python)}, capture_output=True, text=True)
    run = install(old)
    assert run.returncode == 1
    assert run.stderr.strip() == (f"install.sh: {old} is not Python 3.11 or later (the workflow's snakemake needs 3.11); "
                                  "set PYTHON=python3.11")
    assert not (tmp_path / ".venv").exists()
    run = install(tmp_path / "python9")
    assert run.returncode == 1 and run.stderr.strip() == f"install.sh: no Python at {tmp_path / 'python9'}; set PYTHON=python3.11"
    # a Python that says it is 3.11 passes the check and goes on to make .venv (where this one stops, with 3)
    new = tmp_path / "python3.11"
    new.write_text(old.read_text().replace("(3, 10, 0)", "(3, 11, 0)"))
    new.chmod(old.stat().st_mode)
    assert install(new).returncode == 3
    # an existing .venv is the one checked, and the way out says to remove it
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(old, tmp_path / ".venv" / "bin" / "python")
    run = install(new)
    assert run.returncode == 1 and run.stderr.strip().endswith(
        "is not Python 3.11 or later (the workflow's snakemake needs 3.11); remove .venv and run install.sh again with PYTHON=python3.11")
