"""The tuning engine: one config in, one result out.

Each row is one (target distribution p, prefix init) pair. A row's prefix is L
vectors fed to the model as input embeddings (after an optional BOS token); the
model's next-token distribution q at the last position is compared with p by
KL(p || q), and the prefix is tuned to lower it. The minimum KL over the
trajectory is the row's answer, with the entropy of q at that point.

Many rows are tuned in one batch. Rows never interact: the loss is a sum of
per-row losses and AdamW is elementwise, so a row's trajectory is the one it
would have alone. A row stops after ``patience`` steps without lowering its best
KL by a fraction ``min_delta`` (so float noise on a plateau cannot keep it alive)
or after ``max_steps``; stopped rows leave the batch (their parameters and AdamW
state are sliced away), so they cost nothing.

Prompt positions are soft here: every position is a free embedding vector.
``soft_positions`` names them, so hard (vocabulary-token) positions can join the
same loop as a mask over positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .errors import DistreachError
from .infotheory import entropy, kl

METHODS = ("soft",)
INITS = ("vocab", "normal")
BOS_POLICIES = ("bos", "none")


@dataclass(frozen=True)
class TuneConfig:
    method: str = "soft"
    prefix_len: int = 5
    lr: float = 0.1
    weight_decay: float = 0.01
    max_steps: int = 500
    patience: int = 20
    min_delta: float = 1e-4  # relative gain over the best KL a step needs to reset patience
    init: str = "vocab"  # embeddings of random vocabulary tokens, or a scaled normal
    init_scale: float = 1.0  # normal init: std = init_scale * std of the embedding table
    bos: str = "bos"  # put the tokenizer's BOS token before the prefix, or nothing
    batch_size: int = 0  # rows tuned together; 0 = all rows at once

    def __post_init__(self):
        checks = [
            (self.method in METHODS, "method", f"must be one of {METHODS}"),
            (self.prefix_len >= 1, "prefix_len", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.max_steps >= 1, "max_steps", "must be >= 1"),
            (self.patience >= 1, "patience", "must be >= 1"),
            (self.min_delta >= 0, "min_delta", "must be >= 0"),
            (self.init in INITS, "init", f"must be one of {INITS}"),
            (self.init_scale > 0, "init_scale", "must be > 0"),
            (self.bos in BOS_POLICIES, "bos", f"must be one of {BOS_POLICIES}"),
            (self.batch_size >= 0, "batch_size", "must be >= 0"),
        ]
        for ok, key, why in checks:
            if not ok:
                raise DistreachError(f"tuning.{key}: {why} (got {getattr(self, key)!r})")

    @property
    def n_soft(self) -> int:
        return self.prefix_len


@dataclass
class TuneResult:
    """Per-row results, all arrays of length n_rows; information in nats."""

    kl_min: np.ndarray
    q_entropy: np.ndarray  # entropy of q at the step of kl_min
    best_step: np.ndarray
    steps: np.ndarray  # forward evaluations of the row
    early_stopped: np.ndarray  # stopped by patience rather than max_steps
    status: list = field(default_factory=list)  # "ok" or why the row failed
    best_prefix: np.ndarray | None = None  # [n, L, d] float32: the prefix that reached kl_min

    def __len__(self) -> int:
        return len(self.kl_min)


def init_prefix(embed: torch.nn.Module, weight: torch.Tensor, seed: int, cfg: TuneConfig) -> torch.Tensor:
    """The starting prefix of one row, [L, d] float32, from its own seed."""
    gen = torch.Generator().manual_seed(int(seed))
    if cfg.init == "vocab":
        ids = torch.randint(0, weight.shape[0], (cfg.prefix_len,), generator=gen)
        with torch.no_grad():
            # through the embedding module, so models that scale embeddings (Gemma) get real inputs
            return embed(ids.to(weight.device)).float().cpu()
    std = weight.float().std().item() * cfg.init_scale
    return torch.randn(cfg.prefix_len, weight.shape[1], generator=gen) * std


def _slice_adamw(opt: torch.optim.AdamW, param: torch.Tensor, keep: torch.Tensor):
    """A new parameter and AdamW holding only the kept rows, state included."""
    new = torch.nn.Parameter(param.detach()[keep].clone())
    new_opt = torch.optim.AdamW([new], **{k: v for k, v in opt.defaults.items() if k in ("lr", "weight_decay", "betas", "eps")})
    old = opt.state.get(param)
    if old:
        new_opt.state[new] = {
            "step": old["step"].clone(),
            "exp_avg": old["exp_avg"][keep].clone(),
            "exp_avg_sq": old["exp_avg_sq"][keep].clone(),
        }
    return new, new_opt


def _tune_batch(model, target_p, prefix, bos_embed, cfg: TuneConfig, on_step=None):
    n = target_p.shape[0]
    device = target_p.device
    dtype = next(model.parameters()).dtype
    kl_min = torch.full((n,), float("inf"), dtype=torch.float64)
    q_ent = torch.full((n,), float("nan"), dtype=torch.float64)
    best_step = torch.full((n,), -1, dtype=torch.long)
    steps = torch.zeros(n, dtype=torch.long)
    early = torch.zeros(n, dtype=torch.bool)
    status = ["ok"] * n
    since = torch.zeros(n, dtype=torch.long)
    best_prefix = prefix.detach().float().cpu().clone()

    active = torch.arange(n)  # row indices of the batch's rows
    theta = torch.nn.Parameter(prefix.to(device))
    opt = torch.optim.AdamW([theta], lr=cfg.lr, weight_decay=cfg.weight_decay)
    for step in range(cfg.max_steps):
        x = theta.to(dtype)
        if bos_embed is not None:
            x = torch.cat([bos_embed.expand(x.shape[0], -1, -1), x], dim=1)
        logits = model(inputs_embeds=x, logits_to_keep=1).logits[:, -1].float()
        logq = torch.log_softmax(logits, -1)
        loss_rows = kl(target_p[active.to(device)], logq)

        with torch.no_grad():
            lr_cpu = loss_rows.detach().double().cpu()
            finite = torch.isfinite(lr_cpu)
            improved = finite & (lr_cpu < kl_min[active])
            gained = finite & (lr_cpu < kl_min[active] * (1 - cfg.min_delta))
            if improved.any():
                idx = active[improved]
                kl_min[idx] = lr_cpu[improved]
                q_ent[idx] = entropy(logq.detach()[improved.to(device)]).double().cpu()
                best_step[idx] = step
                best_prefix[idx] = theta.detach()[improved.to(device)].float().cpu()
            since[active] = torch.where(gained, 0, since[active] + 1)
            steps[active] += 1
            for r in active[~finite].tolist():
                status[r] = f"non-finite KL at step {step}"
            stop = ~finite | (since[active] >= cfg.patience)
            early[active[stop & finite]] = True
            keep = ~stop
        if on_step is not None:
            on_step(step, int(keep.sum()))
        if not keep.any():
            break
        opt.zero_grad(set_to_none=True)
        loss_rows[keep.to(device)].sum().backward()
        opt.step()
        if not keep.all():
            theta, opt = _slice_adamw(opt, theta, keep.to(device))
            active = active[keep]
    return kl_min, q_ent, best_step, steps, early, status, best_prefix


def tune(loaded, target_probs, init_seeds, cfg: TuneConfig, on_step: Callable[[int, int], None] | None = None) -> TuneResult:
    """Tune one prefix per row; row i targets ``target_probs[i]`` from ``init_seeds[i]``.

    ``loaded`` is a :class:`distreach.models.LoadedModel`; ``target_probs`` is
    [n, |V|] (probabilities, rows summing to 1). ``on_step(step, n_active)`` is
    called after every step of every batch with the rows still being tuned."""
    model = loaded.model
    weight = loaded.embeddings
    embed = model.get_input_embeddings()
    device = weight.device
    target = torch.as_tensor(np.asarray(target_probs), dtype=torch.float32)
    if target.ndim != 2 or target.shape[1] != loaded.vocab_size:
        raise DistreachError(
            f"targets have shape {tuple(target.shape)}, expected [n, {loaded.vocab_size}] for model {loaded.name}"
        )
    if len(init_seeds) != target.shape[0]:
        raise DistreachError(f"{len(init_seeds)} init seeds for {target.shape[0]} target rows")
    bos_embed = None
    if cfg.bos == "bos":
        bos_id = loaded.tokenizer.bos_token_id
        if bos_id is None:
            raise DistreachError(f"tuning.bos: model {loaded.name} has no BOS token; use bos: none")
        with torch.no_grad():
            bos_embed = embed(torch.tensor([[bos_id]], device=device))
    prefix = torch.stack([init_prefix(embed, weight, s, cfg) for s in init_seeds])

    n = target.shape[0]
    bs = cfg.batch_size or n
    parts = []
    for lo in range(0, n, bs):
        sl = slice(lo, lo + bs)
        parts.append(_tune_batch(model, target[sl].to(device), prefix[sl], bos_embed, cfg, on_step))
    cat = lambda i: torch.cat([p[i] for p in parts]).numpy()  # noqa: E731
    return TuneResult(
        kl_min=cat(0),
        q_entropy=cat(1),
        best_step=cat(2),
        steps=cat(3),
        early_stopped=cat(4),
        status=[s for p in parts for s in p[5]],
        best_prefix=cat(6),
    )
