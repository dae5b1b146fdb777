"""The nats/bits unit, without torch (the claims read it too).

Every quantity is computed in nats; ``to_unit``/``from_unit`` convert at the
edges, so the unit a user asks for is applied exactly once.
"""

from __future__ import annotations

import math

UNITS = ("nats", "bits")
DEFAULT_UNIT = "bits"  # wherever no unit is given (the schema's entropy_unit default, tested to agree)


def check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise ValueError(f"entropy unit must be one of {UNITS}, got {unit!r}")
    return unit


def to_unit(value_nats, unit: str):
    """Convert a value (float, array or tensor) from nats to ``unit``."""
    return value_nats / math.log(2) if check_unit(unit) == "bits" else value_nats


def from_unit(value, unit: str):
    """Convert a value from ``unit`` to nats."""
    return value * math.log(2) if check_unit(unit) == "bits" else value
