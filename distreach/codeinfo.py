"""What code a workflow step runs: the distreach modules it reaches and the packages they import.

Used by the workflow (a fingerprint of the modules a rule runs is one of its params, so editing
them reruns that rule and only that rule) and by the test that checks each rule's conda env
provides every third-party package its code imports.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(distreach modules, top-level third-party modules) that a file imports anywhere in it."""
    tree = ast.parse(path.read_text(), str(path))
    internal, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == "distreach":
                    internal.add(alias.name.split(".")[1] if "." in alias.name else "__init__")
                else:
                    external.add(top)
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0 or (node.module or "").split(".")[0] == "distreach":
                mod = (node.module or "").removeprefix("distreach").lstrip(".")
                if mod:
                    internal.add(mod.split(".")[0])
                else:  # from . import x / from distreach import x
                    internal.update(a.name for a in node.names)
            elif node.module:
                external.add(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    return {m for m in internal if (PACKAGE / f"{m}.py").exists()}, external - stdlib


def closure(entry: list[str | Path]) -> tuple[list[str], set[str]]:
    """The distreach modules reachable from ``entry`` (module names or script paths), sorted,
    and every third-party top-level module they import."""
    todo, seen, external = [], set(), set()
    scripts = [Path(e) for e in entry if isinstance(e, Path) or str(e).endswith(".py")]
    todo = [str(e) for e in entry if not (isinstance(e, Path) or str(e).endswith(".py"))]
    done_scripts = set()
    while scripts:  # a script and the sibling modules it imports (scripts/_repo.py)
        path = scripts.pop()
        if path in done_scripts:
            continue
        done_scripts.add(path)
        internal, ext = _imports(path)
        todo += internal
        for name in ext:
            sibling = path.with_name(f"{name}.py")
            if sibling.is_file():
                scripts.append(sibling)
            else:
                external.add(name)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        internal, ext = _imports(PACKAGE / f"{name}.py")
        todo += internal - seen
        external |= ext
    return sorted(seen), external


def fingerprint(*entry: str | Path) -> str:
    """sha256 (16 hex) over the sources of the distreach modules reachable from ``entry``."""
    digest = hashlib.sha256()
    for name in closure(list(entry))[0]:
        digest.update(name.encode() + b"\0" + (PACKAGE / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]
