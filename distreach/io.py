"""Atomic writes and provenance: a result file is either complete or absent."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from .errors import DistreachError, one_line

PROVENANCE_PACKAGES = ("distreach", "torch", "transformers", "numpy", "pyarrow", "polars", "gguf")


def package_versions() -> dict[str, str]:
    """Python's and the packages' versions, and the commit of the distreach checkout (where it runs from one)."""
    out = {"python": platform.python_version()}
    for name in PROVENANCE_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if (commit := source_commit()) is not None:
        out["distreach_commit"] = commit
    return out


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The :func:`git_commit` of the checkout the distreach package runs from (None for an installed copy)."""
    return git_commit(Path(__file__).resolve().parents[1])


CODE_PATHS = ("distreach", "scripts", "rules", "Snakefile", "schemas", "benchmarks/*.py", "benchmarks/*.sh", "config.yaml",
              "configs", "envs", "pyproject.toml", "requirements*.txt")  # what runs; result files kept here are not code


def git_commit(root: Path) -> str | None:
    """The commit checked out at the top of the git work tree ``root``, with ``+dirty`` where its
    code (:data:`CODE_PATHS`: changed tracked files or new files) differs from it; None where
    ``root`` is not such a top or git cannot tell. Read only: no lock taken, and git's variables
    that point it at another repository (a hook's ``GIT_DIR``, say) left out."""
    if not (root / ".git").exists():
        return None

    def git(*args, env=None) -> str:
        return subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=60, check=True, env=env).stdout.strip()

    try:
        local = set(git("rev-parse", "--local-env-vars").split())
        env = {k: v for k, v in os.environ.items() if k not in local}
        commit = git("rev-parse", "HEAD", env=env)
        changes = git("status", "--porcelain", "--untracked-files=normal", "--", *CODE_PATHS, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if changes else "")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False):
    """Yield a temporary sibling path; on success rename it onto ``path``.

    On any error the temporary file or folder is removed, and so are the folders made
    for it, so readers never see a partial result."""
    path = Path(path)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    target = tmp if is_dir else tmp / path.name
    done = False
    try:
        yield target
        if is_dir:
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        else:
            os.replace(target, path)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created if not done else ():  # the folders made for it, if still empty
            try:
                folder.rmdir()
            except OSError:
                break


def with_metadata(table: pa.Table, metadata_json: dict) -> pa.Table:
    """``table`` with ``metadata_json`` in its schema metadata (read back by :func:`arrow_metadata`)."""
    meta = dict(table.schema.metadata or {})
    meta[b"distreach"] = json.dumps(metadata_json, sort_keys=True).encode()
    return table.replace_schema_metadata(meta)


def write_arrow(table: pa.Table, path: str | os.PathLike, metadata_json: dict | None = None) -> None:
    """Write an Arrow IPC file atomically, with ``metadata_json`` in the schema metadata."""
    if metadata_json is not None:
        table = with_metadata(table, metadata_json)
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def read_arrow(path: str | os.PathLike) -> pa.Table:
    try:
        with pa.memory_map(str(path), "r") as source:
            return ipc.open_file(source).read_all()
    except FileNotFoundError:
        raise DistreachError(f"{path}: file not found") from None
    except (pa.ArrowException, OSError, ValueError) as exc:  # a corrupt or truncated file
        raise DistreachError(f"{path}: not a readable Arrow IPC file ({one_line(exc)})") from None


def arrow_metadata(table: pa.Table) -> dict:
    raw = (table.schema.metadata or {}).get(b"distreach")
    return json.loads(raw) if raw else {}


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def logging_to(path: str | os.PathLike):
    """Send logging, stdout and stderr to ``path`` for a workflow step.

    Records logged with ``extra={"announce": True}`` (a tuning job resuming from its checkpoint)
    also go to the step's own stderr, which Snakemake shows. A :class:`DistreachError` is
    logged as its one-line message, anything else with its traceback; either is raised on,
    for the step to end as it sees fit (the library never exits the process)."""
    import logging
    import sys

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        echo = logging.StreamHandler(sys.__stderr__)
        echo.setFormatter(logging.Formatter("distreach: %(message)s"))
        echo.addFilter(lambda record: getattr(record, "announce", False))
        root = logging.getLogger()
        root.addHandler(handler)
        root.addHandler(echo)
        root.setLevel(logging.INFO)
        try:
            yield
        except DistreachError as exc:
            logging.getLogger("distreach").error("%s", exc)
            raise
        except Exception:
            logging.getLogger("distreach").exception("failed")
            raise
        finally:
            root.removeHandler(handler)
            root.removeHandler(echo)
