"""The wheels benchmarks/gpu_check.sh installs on the GPU machine (nvidia-h200 image, Python 3.12,
x86_64, no network): what distreach, its workflow and its claims report import that the image
lacks or has too old, and nothing else, to stay small (the whole travelling tree, repository
included, must stay under 60 MiB).

    python benchmarks/gpu_wheels.py [DIR]        # default .whl in the repository root (ignored by git)

Downloads them with pip (--no-deps: the list is the closure) and rewrites every wheel over
5 MB with LZMA instead of deflate (the same files, checksums and RECORD; pip reads either), so
polars' runtime (54 MB) and transformers (13 MB) travel in about 33 and 9 MB.
Not carried: pulp (gpu_check runs snakemake with --scheduler greedy), spaCy (no POS tables:
its experiments are left out), vl-convert (no figures), and snakemake's imports for features
the check does not use (docutils, GitPython, conda-inject, greenlet).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS = [
    "transformers==5.24.0",  # the project needs >= 5.24; the image has 5.17
    "polars==2.1.0",
    "polars-runtime-32==2.1.0",
    "snakemake==9.27.1",
    "snakemake-interface-common==1.23.0",
    "snakemake-interface-executor-plugins==9.4.0",
    "snakemake-interface-storage-plugins==4.4.1",
    "snakemake-interface-report-plugins==1.3.0",
    "snakemake-interface-logger-plugins==2.1.0",
    "snakemake-interface-scheduler-plugins==2.0.2",
    "argparse-dataclass==2.0.0",
    "ConfigArgParse==1.9.0",
    "connection_pool==0.0.3",  # published as a source distribution only: built here
    "immutables==0.21",
    "platformdirs==4.14.9",
    "throttler==1.2.3",
    "tenacity==9.2.1",
    "yte==1.9.4",
    "dpath==2.2.0",
    "smart_open==7.7.1",  # snakemake's source cache parses paths with it
    "nbformat==5.11.1",  # snakemake imports it to tell a script's language
    "fastjsonschema==2.22.3",
    "jupyter_core==5.9.1",
    "traitlets==5.16.1",
    "sqlmodel==0.0.37",  # snakemake's persistence imports it
    "SQLAlchemy==2.0.58",
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",  # pydantic needs >= 4.16
    "jsonschema==4.26.0",  # the config check
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "altair==6.3.0",  # the claims report imports distreach.figures
    "narwhals==2.29.0",  # altair needs >= 2.4
    # snakemake's own requirements that the image may lack (humanfriendly, at least, it does lack)
    "humanfriendly==10.0",
    "reretry==0.11.8",
    "tabulate==0.10.0",
    "wrapt==2.5.2",
    "psutil==7.2.2",
    "appdirs==1.4.4",
    "requests==2.34.2",
    "urllib3==2.8.0",
    "idna==3.20",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "packaging==26.4",
]
BUILT = {"connection_pool"}
PLATFORM = ["--python-version", "3.12", "--implementation", "cp"] + [
    arg
    for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                "manylinux2014_x86_64", "manylinux1_x86_64")
    for arg in ("--platform", tag)
]
LZMA_OVER = 5 * 2**20


def relzma(wheel: Path) -> None:
    """Rewrite ``wheel`` with every member LZMA-compressed (same names, contents and order)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as dst:
        for info in src.infolist():
            data = src.read(info)
            info.compress_type = zipfile.ZIP_LZMA
            dst.writestr(info, data)
    tmp.replace(wheel)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", default=str(Path(__file__).resolve().parents[1] / ".whl"))
    args = ap.parse_args()
    out = Path(args.dir)
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip"]
        binary = [w for w in WHEELS if w.split("==")[0] not in BUILT]
        built = [w for w in WHEELS if w.split("==")[0] in BUILT]
        subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", *PLATFORM, "-d", tmp, *binary],
                       check=True)
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", tmp, *built], check=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != len(WHEELS):
            sys.exit(f"gpu_wheels: expected {len(WHEELS)} wheels, pip gave {len(wheels)}: {[w.name for w in wheels]}")
        for w in wheels:
            if w.stat().st_size > LZMA_OVER:
                relzma(w)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(tmp, out)
    total = sum(w.stat().st_size for w in out.glob("*.whl"))
    for w in sorted(out.glob("*.whl"), key=lambda p: -p.stat().st_size):
        print(f"{w.stat().st_size / 2**20:8.2f} MiB  {w.name}")
    print(f"gpu_wheels: {len(wheels)} wheels, {total / 2**20:.1f} MiB in {out}")


if __name__ == "__main__":
    main()
