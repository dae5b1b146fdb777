"""Entropy and KL divergence on log-probabilities, and the nats/bits unit.

Every quantity is computed in nats; ``to_unit``/``from_unit`` convert at the
edges, so the unit a user asks for is applied exactly once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

UNITS = ("nats", "bits")


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


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of each row of log-probabilities (last dim)."""
    return -(logp.exp() * logp).nan_to_num(0.0).sum(-1)


def kl(p: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) in nats per row, from probabilities p and log-probabilities q.

    Zero-probability target entries contribute exactly 0 (torch's ``kl_div``
    uses ``xlogy`` for the target term)."""
    return F.kl_div(logq, p, reduction="none").sum(-1)


def max_entropy(vocab_size: int, unit: str = "nats") -> float:
    """log |V| in ``unit``: the entropy of the uniform distribution."""
    return to_unit(math.log(vocab_size), unit)
