"""Make this checkout's ``distreach`` importable where it is not installed: a per-rule conda env
(``--sdm conda``) holds the rule's third-party packages only. Every script imports this first."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("distreach") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
