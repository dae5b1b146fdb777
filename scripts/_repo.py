"""Make this checkout's ``distreach`` importable where it is not installed: a per-rule conda env
(``--sdm conda``) holds the rule's third-party packages only. Every script imports this first.

:func:`step_log` runs a workflow step's body with its output in the step's log file."""

import contextlib
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("distreach") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@contextlib.contextmanager
def step_log(path):
    """Logging, stdout and stderr to ``path`` (:func:`distreach.io.logging_to`); a
    ``DistreachError`` ends the step with ``error: <its one line>`` on stderr, which Snakemake
    shows, and exit status 1."""
    from distreach.errors import DistreachError
    from distreach.io import logging_to

    try:
        with logging_to(path):
            yield
    except DistreachError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
