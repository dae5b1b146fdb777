"""Loading never runs remote code or unpickles untrusted data (checked over the library source)."""

from __future__ import annotations

import ast
from pathlib import Path

import distreach

SOURCES = sorted(Path(distreach.__file__).parent.glob("*.py"))


def calls(name: str):
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                full = ast.unparse(func)
                if full == name or full.endswith("." + name.split(".")[-1]) and full.split(".")[0] == name.split(".")[0]:
                    yield path.name, node


def kw(node, key):
    for k in node.keywords:
        if k.arg == key:
            return ast.unparse(k.value)
    return None


def test_torch_load_is_weights_only():
    found = list(calls("torch.load"))
    assert found, "the checkpoint reader uses torch.load"
    for where, node in found:
        assert kw(node, "weights_only") == "True", where


def test_numpy_never_unpickles():
    found = list(calls("np.load"))
    assert found, "the .npy target reader uses np.load"
    for where, node in found:
        assert kw(node, "allow_pickle") == "False", where


def test_no_pickle_and_remote_code_only_when_configured():
    for path in SOURCES:
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, path.name
        assert "trust_remote_code=True" not in text, path.name
    models = (Path(distreach.__file__).parent / "models.py").read_text()
    assert "use_safetensors=True" in models


def test_materialised_models_are_safetensors_only(tiny_dirs):
    folder = tiny_dirs["llama"]
    names = {p.suffix for p in folder.iterdir()}
    assert ".safetensors" in names and not names & {".bin", ".pt", ".pth", ".pkl"}
