"""Entropy and KL divergence on log-probabilities, in nats (``distreach.units`` converts)."""

from __future__ import annotations

import math

import torch

from .units import to_unit


def entropy(logp: torch.Tensor, finite: bool = False) -> torch.Tensor:
    """Shannon entropy in nats of each row of log-probabilities (last dim). A zero probability
    (log-probability -inf) contributes 0. ``finite=True`` where no entry is -inf (the
    log_softmax of finite logits, as in a descent on them): the same values, forward and
    backward, without the passes that clear 0 * -inf (about a fifth of such a descent's time)."""
    terms = logp.exp() * logp
    return -(terms if finite else terms.nan_to_num(0.0)).sum(-1)


def log_of(p: torch.Tensor) -> torch.Tensor:
    """log p where p > 0 and 0 where p = 0: the log-probabilities that KL(p || q) weighs by p (a
    zero probability's term is 0 whatever its log)."""
    return torch.where(p > 0, p.log(), 0.0)


def kl(p: torch.Tensor, logq: torch.Tensor, logp: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p || q) in nats per row, from probabilities p and log-probabilities q:
    sum p (log p - log q), the difference taken term by term, so a small KL (q near p) keeps its
    precision (a difference of the two sums, each about the entropy of p, would not).

    Zero-probability target entries contribute exactly 0 wherever q > 0, as in torch's
    ``kl_div``, whose sum over the last dim this equals up to rounding, with the same gradient
    to log q (-p). ``logp`` is :func:`log_of` of p where the caller has it: a descent on q
    computes it once instead of a logarithm over the vocabulary at every step, for log q of
    finite logits. Without ``logp``, a zero probability contributes 0 also where q = 0 (log q
    = -inf: a target's padding rows). Mixed dtypes compute in the wider one."""
    dtype = torch.result_type(p, logq) if logp is None else torch.promote_types(torch.result_type(p, logq), logp.dtype)
    p = p.to(dtype)
    # 0 - sum p (log q - log p): the same numbers as sum p (log p - log q) (a subtraction from 0 is
    # exact, and a KL of 0 stays +0), and the gradient reaches log q without a negation over the
    # vocabulary (only over the rows)
    if logp is None:
        return 0.0 - torch.linalg.vecdot(p, torch.where(p > 0, logq.to(dtype) - log_of(p), 0.0))
    return 0.0 - torch.linalg.vecdot(p, logq.to(dtype) - logp.to(dtype))


def max_entropy(vocab_size: int, unit: str = "nats") -> float:
    """log |V| in ``unit``: the entropy of the uniform distribution."""
    return to_unit(math.log(vocab_size), unit)
