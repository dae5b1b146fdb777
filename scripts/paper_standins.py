"""Write configs/paper-stand-ins.yaml from configs/paper.yaml
(distreach.paper_standins.write_stand_ins_config).

    python scripts/paper_standins.py [configs/paper.yaml [configs/paper-stand-ins.yaml]]
"""

import _repo  # noqa: F401  (this checkout's distreach)

import sys

from distreach.paper_standins import write_stand_ins_config

paper = sys.argv[1] if len(sys.argv) > 1 else "configs/paper.yaml"
out = sys.argv[2] if len(sys.argv) > 2 else "configs/paper-stand-ins.yaml"
cfg = write_stand_ins_config(paper, out)
stand_ins = sum("stand_in" in m["source"] for m in cfg["models"].values())
print(f"wrote {out}: {stand_ins} stand-ins, {len(cfg['experiments'])} experiments, {len(cfg['figures'])} figures")
