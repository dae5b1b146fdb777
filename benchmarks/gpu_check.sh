#!/usr/bin/env bash
# One command on a lent GPU (nvidia-h200 image: python3 with torch, no polars or snakemake):
# installs the carried wheels, then runs benchmarks/gpu_check.py with the image's python3.
#
#   bash benchmarks/gpu_check.sh [OUT.json] [gpu_check.py options]     # default benchmarks/out/gpu_check.json
#   bash benchmarks/gpu_check.sh /tmp/smoke.json --smoke               # the same, tiny, on the CPU
#
# GPU_CHECK_WHEELS: the wheel folder (default .whl in the repository root; made by
# benchmarks/gpu_wheels.py); GPU_CHECK_SITE: where they are installed (default /tmp/site).
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=${GPU_CHECK_WHEELS:-.whl}
site=${GPU_CHECK_SITE:-/tmp/site}
if compgen -G "$wheels/*.whl" >/dev/null; then
    t=$SECONDS
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu_check.sh: $(ls "$wheels"/*.whl | wc -l) wheels from $wheels installed in $site ($((SECONDS - t)) s)"
else
    echo "gpu_check.sh: no wheels in $wheels: using python3's own packages"
fi
exec python3 benchmarks/gpu_check.py "$@"
