"""A workflow step's log: the library logs and raises (it never exits the process); the scripts'
step_log turns a DistreachError into one line on stderr and exit status 1."""

from __future__ import annotations

import pytest

from distreach.errors import DistreachError
from distreach.io import logging_to

import _repo  # scripts/ is on pytest's pythonpath (pyproject.toml)


def test_library_logs_the_error_and_raises_it_on(tmp_path):
    log = tmp_path / "logs" / "step.log"
    with pytest.raises(DistreachError, match="bad key"):
        with logging_to(log):
            print("working")
            raise DistreachError("config key x: bad key")
    text = log.read_text()
    assert "working" in text and "config key x: bad key" in text and "Traceback" not in text


def test_step_log_exits_1_with_the_one_line_on_stderr(tmp_path, capsys):
    log = tmp_path / "step.log"
    with pytest.raises(SystemExit) as exit_:
        with _repo.step_log(log):
            raise DistreachError("targets.arrow: no targets in the file")
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: targets.arrow: no targets in the file\n"
    assert "no targets in the file" in log.read_text()


def test_step_log_keeps_other_errors_with_their_traceback(tmp_path):
    log = tmp_path / "step.log"
    with pytest.raises(ZeroDivisionError):
        with _repo.step_log(log):
            1 / 0
    assert "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()
