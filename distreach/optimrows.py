"""Dropping rows from a batch under optimisation: rows are independent (the loss is a sum over
rows and Adam's update is elementwise), so the rows kept follow the same trajectory as in the
full batch while the finished ones cost nothing more. Bit for bit at one torch thread (as the
workflow's jobs run): with several threads torch splits the row sums of a batch of one long row
(32k entries and more) across threads, which can change their last bits."""

from __future__ import annotations

import inspect

import torch


def keep_rows(opt: torch.optim.Optimizer, param: torch.Tensor, keep: torch.Tensor):
    """A new parameter holding only the rows ``keep`` of ``param`` (dim 0) and an optimiser of
    ``opt``'s kind and settings holding their state (moments sliced, step count copied)."""
    new = torch.nn.Parameter(param.detach()[keep].clone())
    accepted = inspect.signature(type(opt)).parameters
    new_opt = type(opt)([new], **{k: v for k, v in opt.defaults.items() if k in accepted})
    old = opt.state.get(param)
    if old:
        new_opt.state[new] = {
            k: v[keep].clone() if v.dim() and v.shape[0] == param.shape[0] else v.clone() for k, v in old.items()
        }
    return new, new_opt
