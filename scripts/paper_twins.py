"""Write configs/paper-twins.yaml from configs/paper.yaml (distreach.paper_twins.write_twins_config).

    python scripts/paper_twins.py [configs/paper.yaml [configs/paper-twins.yaml]]
"""

import _repo  # noqa: F401  (this checkout's distreach)

import sys

from distreach.paper_twins import write_twins_config

paper = sys.argv[1] if len(sys.argv) > 1 else "configs/paper.yaml"
out = sys.argv[2] if len(sys.argv) > 2 else "configs/paper-twins.yaml"
cfg = write_twins_config(paper, out)
print(f"wrote {out}: {len(cfg['twins'])} twins, {len(cfg['experiments'])} experiments, {len(cfg['figures'])} figures")
