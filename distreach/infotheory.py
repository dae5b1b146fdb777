"""Entropy and KL divergence on log-probabilities, in nats (``distreach.units`` converts)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .units import to_unit

def entropy(logp: torch.Tensor, finite: bool = False) -> torch.Tensor:
    """Shannon entropy in nats of each row of log-probabilities (last dim). A zero probability
    (log-probability -inf) contributes 0. ``finite=True`` where no entry is -inf (the
    log_softmax of finite logits, as in a descent on them): the same values, forward and
    backward, without the passes that clear 0 * -inf (about a fifth of such a descent's time)."""
    terms = logp.exp() * logp
    return -(terms if finite else terms.nan_to_num(0.0)).sum(-1)


def kl(p: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) in nats per row, from probabilities p and log-probabilities q.

    Zero-probability target entries contribute exactly 0 (torch's ``kl_div``
    uses ``xlogy`` for the target term)."""
    return F.kl_div(logq, p, reduction="none").sum(-1)


def max_entropy(vocab_size: int, unit: str = "nats") -> float:
    """log |V| in ``unit``: the entropy of the uniform distribution."""
    return to_unit(math.log(vocab_size), unit)
