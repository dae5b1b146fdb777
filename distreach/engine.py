"""The tuning engine: one config in, one result out.

Each row is one (target distribution p, prefix init) pair. A row's prefix is L
positions fed to the model as input embeddings (after an optional BOS token); the
model's next-token distribution q at the last position is compared with p by
KL(p || q), and the prefix is tuned to lower it. The minimum KL over the
trajectory is the row's answer, with the entropy of q at that point.

One loop serves soft, hard and hybrid prompts; a mask over positions says which
are which. Every step is one forward and backward pass of the batch, then

- soft positions (free embedding vectors) take an AdamW step (paper Eq. 5);
- one hard position (a vocabulary token), in left-to-right turn, is swapped for
  the token minimising the linear approximation of the loss,
  ``(e(x) - theta_i) . grad_i`` (paper Eq. 4, Wallace et al. 2019). With
  ``candidates = 1`` the argmin is always taken (the paper's method); with
  ``candidates = k > 1`` the k best tokens by that score are evaluated exactly in
  one batched no-grad forward and the best is taken only if it lowers the loss,
  so a hard prompt's loss never rises.

A sweep over the hard positions is ``n_hard`` steps; a pure hard row whose sweep
changes nothing has converged and stops. The mask is per row: soft, hybrid and hard
rows of one prefix length and otherwise equal settings are tuned in the same batches
(:func:`tune_groups`).

Many rows are tuned in one batch. Rows never interact: the loss is a sum of
per-row losses, AdamW is elementwise and the hard update is per row, so a row's
trajectory is the one it would have alone, up to the float rounding of passes over
batches of another shape (which can turn a near tie in a discrete decision, a hard
token or a stop, the other way). A row stops after ``patience`` steps
without lowering its best KL by a fraction ``min_delta`` (so float noise on a
plateau cannot keep it alive), once its KL is at most ``stop_kl_nats`` (default
0: never), or after ``max_steps``; stopped rows leave the batch (their parameters
and AdamW state are sliced away), so they cost nothing. With ``batch_size`` 0 the
engine picks the batch size and halves it on CUDA out-of-memory, restarting the
failed batch from its inits (rows never interact, so only such rounding changes). On a
CPU a batch, of any size, first holds only the rows that fit in the free memory
(:mod:`distreach.memory`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import CHECKPOINT_SECONDS, Checkpoint, checkpoint_key
from .errors import DistreachError
from .infotheory import entropy, kl, log_of
from .memory import CANDIDATE_VOCAB_ARRAYS, rows_that_fit
from .methods import ROW_METHODS, ROW_SETTINGS
from .models import dtype_name
from .optimrows import keep_rows
from .settings import TuneConfig
from .tokens import resolve_bos, usable_mask, vocab_support

# re-exported: the settings' facts, read where the engine is (TuneConfig and tune() are its API)
from .methods import DEFAULT_METHOD, METHODS  # noqa: F401,E402
from .settings import GCG_KEYS, GCG_PATIENCE, INITS, PATIENCE  # noqa: F401,E402
from .tokens import BOS_POLICIES  # noqa: F401,E402

log = logging.getLogger(__name__)

# why a row stopped (TuneResult.stop_reason holds the index): it ran all max_steps; its best KL gained
# less than min_delta for patience steps; its KL reached stop_kl_nats; a pure hard row's sweep changed
# nothing; its KL became NaN or inf
STOP_REASONS = ("step cap", "patience", "target reached", "converged", "non-finite")
# batch_size 0: start at this many rows and halve on CUDA out-of-memory. On a CPU a step costs a
# fixed part (every weight read once: about 0.2 s for SmolLM2 in fp32) plus a part per row, and a
# batch runs as long as its slowest row: fewer, larger batches pay the fixed part and the tail of
# slowly converging rows fewer times (benchmarks/README.md)
AUTO_BATCH = {"cpu": 256, "cuda": 1024}
# the TuneConfig fields a TuningContext is made from (the BOS token and the allowed tokens)
CONTEXT_KEYS = ("bos", "exclude_special", "exclude_untypable")


def is_gain(kl, best, min_delta: float):
    """Whether a step's KL lowers the best KL so far by more than the fraction ``min_delta``: the
    gain that resets a row's patience (tensors or floats; any finite KL gains on an infinite best,
    the best before a row's first step)."""
    return kl < best * (1 - min_delta)


@dataclass
class TuneResult:
    """Per-row results, arrays of length n_rows; information in nats."""

    kl_min: np.ndarray
    q_entropy: np.ndarray  # entropy of q at the step of kl_min
    best_step: np.ndarray
    steps: np.ndarray  # forward evaluations of the row
    early_stopped: np.ndarray  # stopped by patience or convergence rather than max_steps
    stop_reason: np.ndarray  # index into STOP_REASONS
    status: list = field(default_factory=list)  # "ok" or why the row failed
    best_soft: np.ndarray | None = None  # [n, n_soft, d] float32: soft positions at kl_min
    best_ids: np.ndarray | None = None  # [n, n_hard] int64: hard tokens at kl_min
    curve: np.ndarray | None = None  # [n, max_steps] KL per step (NaN after the row stopped), if asked
    init_ids: np.ndarray | None = None  # [n, prefix_len] int64: the tokens each row started from
    # the k = min(top_k, |V|) most probable tokens of each row's target p (ties: lower id first), and
    # at the step of kl_min q's probability of those tokens and q's own k most probable tokens
    p_top_ids: np.ndarray | None = None  # [n, k] int64
    q_on_p_top: np.ndarray | None = None  # [n, k] float32
    q_top_ids: np.ndarray | None = None  # [n, k] int64
    q_top_probs: np.ndarray | None = None  # [n, k] float32
    # the work of the tune() call that made the result (not per row): ``row_steps``, the steps of rows
    # it ran (a row tuned for k steps is k), ``resumed_from``, None or where it picked up a
    # checkpoint: ``{"row": r, "step": s}``, batch from row r at step s (rows before r were done), and
    # ``batch_rows``, the rows of each batch the result was tuned in, in order (as asked, or fewer after
    # CUDA out-of-memory halving or the CPU memory check; a resumed call's include the batches its
    # checkpoint held; a batch's float rounding depends on its shape); gcg adds ``candidates`` (the prompts
    # this call scored) and ``gcg_width``; a tuning job's fp32 retry adds its own (distreach.tuning)
    work: dict | None = None

    def __len__(self) -> int:
        return len(self.kl_min)

    def take(self, rows: slice) -> "TuneResult":
        """The records of a slice of rows, as a new result (with the work of the whole call)."""
        return TuneResult(**{f.name: v if (v := getattr(self, f.name)) is None or f.name == "work" else v[rows]
                             for f in fields(TuneResult)})


def allowed_tokens(tokenizer, n_embed: int, cfg: TuneConfig) -> torch.Tensor:
    """Bool mask over input-embedding rows a hard position (or a vocab init) may use: the
    usable tokens of :mod:`distreach.tokens` (never padding rows; with ``exclude_special``
    never special or reserved tokens), and with ``exclude_untypable`` only tokens that
    survive decode -> encode."""
    ok = torch.from_numpy(usable_mask(tokenizer, n_embed, cfg.exclude_special))
    if cfg.exclude_untypable:
        ids = ok.nonzero().flatten().tolist()
        texts = tokenizer.batch_decode([[i] for i in ids])
        back = tokenizer(texts, add_special_tokens=False).input_ids
        for i, b in zip(ids, back):
            if b != [i]:
                ok[i] = False
    if not ok.any():
        raise DistreachError("no vocabulary token is allowed for hard positions")
    return ok


def _draw_ids(pool: torch.Tensor, seed, prefix_len: int):
    gen = torch.Generator().manual_seed(int(seed))
    return gen, pool[torch.randint(0, len(pool), (prefix_len,), generator=gen)]


def init_token_ids(allowed: torch.Tensor, seeds, prefix_len: int) -> torch.Tensor:
    """[n, prefix_len] allowed token ids, row i drawn from ``seeds[i]``: the tokens
    :func:`init_rows` starts from. A longer prefix from the same seed starts with the same
    tokens as a shorter one, so rows that share a seed (every method and prefix length on one
    target) share their init tokens as far as shapes allow."""
    pool = allowed.nonzero().flatten()
    out = [_draw_ids(pool, seed, prefix_len)[1] for seed in seeds]
    return torch.stack(out) if out else torch.zeros((0, prefix_len), dtype=torch.long)


def init_rows(embed, weight, allowed: torch.Tensor, seeds, cfg: TuneConfig):
    """Starting prefixes: [n, L, d] float32 starting vectors of every position (a soft position
    starts at its row's; a hard one never reads it) and the [n, L] tokens drawn
    (:func:`init_token_ids`), where hard positions start.

    Each row draws L allowed tokens from its own seed; its vectors are those tokens' embeddings
    (through the embedding module, so models that scale embeddings, like Gemma, get real inputs)
    or a scaled normal. So a position starts at the same token, and as a soft position at the
    same vector, whichever positions of the row are soft: a hybrid with every position soft
    starts where a soft prompt does, one with none where a hard prompt does."""
    pool = allowed.nonzero().flatten()
    soft, drawn = [], []
    std = weight.float().std().item() * cfg.init_scale
    for seed in seeds:
        gen, ids = _draw_ids(pool, seed, cfg.prefix_len)
        drawn.append(ids)
        if cfg.init == "vocab":
            with torch.no_grad():
                vec = embed(ids.to(weight.device)).float().cpu()
        else:
            vec = torch.randn(cfg.prefix_len, weight.shape[1], generator=gen) * std
        soft.append(vec)
    if not drawn:
        return torch.zeros((0, cfg.prefix_len, weight.shape[1])), torch.zeros((0, cfg.prefix_len), dtype=torch.long)
    return torch.stack(soft), torch.stack(drawn)


def row_masks(cfg: TuneConfig, n: int) -> torch.Tensor:
    """[n, L] bool: ``cfg.soft_mask`` in each of n rows."""
    return torch.tensor(cfg.soft_mask, dtype=torch.bool).expand(n, cfg.prefix_len).clone()


def _contiguous_head_input(module, args):
    return (args[0].contiguous(),) + tuple(args[1:])


def fast_last_logits(model) -> None:
    """Make the output layer see a contiguous [B, 1, d] input.

    With ``logits_to_keep=1`` transformers hands the output layer a strided slice of
    the hidden states; torch then multiplies it by the [V, d] weight as a batched
    matmul that reads the whole weight once per row (measured on the CPU: 2.2x slower
    per step for a 262k vocabulary). Idempotent."""
    head = model.get_output_embeddings()
    if head is not None and not getattr(head, "_distreach_contiguous", False):
        head.register_forward_pre_hook(_contiguous_head_input)
        head._distreach_contiguous = True


@dataclass(frozen=True, eq=False)
class TuningContext:
    """What every row of one tuning shares, resolved once from the model and the settings
    (:func:`tuning_context`) and passed down: the model, the BOS token id
    (:func:`distreach.tokens.resolve_bos`) and that token's keys and values (:func:`_bos_cache`),
    the tokens hard positions and vocab inits may use (:func:`allowed_tokens`), and the device and
    dtype name (:data:`distreach.models.DTYPES`) the model runs in."""

    loaded: object  # a distreach.models.LoadedModel
    made_for: dict  # the values of CONTEXT_KEYS it was made from
    bos_id: int | None
    allowed: torch.Tensor
    bos_kv: list | None
    device: torch.device
    dtype: str

    def with_weights(self, loaded) -> "TuningContext":
        """This context on other weights of the same model (its fp32 load, say): the BOS id and
        the allowed tokens are the tokenizer's and stay; the BOS keys and values are computed anew."""
        return _on_weights(loaded, self.made_for, self.bos_id, self.allowed)


def model_of(loaded):
    """The :class:`distreach.models.LoadedModel` of ``loaded``: itself, or a TuningContext's model."""
    return loaded.loaded if isinstance(loaded, TuningContext) else loaded


def tuning_context(loaded, cfg: TuneConfig) -> TuningContext:
    """The :class:`TuningContext` of ``loaded`` (a LoadedModel) under ``cfg``, its model's output
    layer made fast (:func:`fast_last_logits`); a TuningContext given as ``loaded`` is returned as
    it is (an error if it was made under other settings)."""
    made_for = {key: getattr(cfg, key) for key in CONTEXT_KEYS}
    if isinstance(loaded, TuningContext):
        if loaded.made_for != made_for:
            raise DistreachError(f"a tuning context made for {loaded.made_for} used with tuning settings {made_for}")
        return loaded
    bos_id = resolve_bos(loaded.tokenizer.bos_token_id, cfg.bos, loaded.name)
    loaded.check_positions(cfg.prefix_len + (bos_id is not None), f"a prompt of prefix_len {cfg.prefix_len}"
                           + (" after BOS" if bos_id is not None else ""))
    return _on_weights(loaded, made_for, bos_id, allowed_tokens(loaded.tokenizer, loaded.embeddings.shape[0], cfg))


def _on_weights(loaded, made_for: dict, bos_id: int | None, allowed: torch.Tensor) -> TuningContext:
    """The context of ``loaded`` with a resolved BOS id and allowed tokens."""
    fast_last_logits(loaded.model)
    weight = loaded.embeddings
    return TuningContext(loaded, made_for, bos_id, allowed, _bos_cache(loaded, bos_id), weight.device,
                         dtype_name(weight.dtype))


def _bos_cache(loaded, bos_id: int | None) -> list | None:
    """The keys and values, per layer ([1, heads, 1, d_head] each), of the BOS token ``bos_id``
    that goes first, or None for none."""
    if bos_id is None:
        return None
    x = loaded.model.get_input_embeddings()(torch.tensor([[bos_id]], device=loaded.embeddings.device))
    return body_kv(loaded.model, x)


@torch.no_grad()
def body_kv(model, x, cache=None) -> list:
    """Keys and values per layer of the positions ``x`` (after those ``cache`` holds): the body
    only, as positions whose keys and values are kept need no logits."""
    return [(k, v) for k, v, *_ in model.base_model(inputs_embeds=x, cache=cache, use_cache=True).cache]


def last_logits(logits: torch.Tensor) -> torch.Tensor:
    """[B, |V|] float logits of the last position of a model's [B, T, |V|] output. With
    ``logits_to_keep=1`` (T = 1) the position is dropped as a view (then cast, where the logits
    are not fp32): its gradient is the logits' own, where taking position -1 (or slicing it) would
    write it into a zero-filled [B, T, |V|] tensor in every backward pass."""
    return (logits.squeeze(1) if logits.shape[1] == 1 else logits[:, -1]).float()


def top_ids(probs: torch.Tensor, k: int) -> torch.Tensor:
    """[n, k] ids of each row's k most probable tokens, most probable first; equal
    probabilities in id order (a stable sort), so the ids are the same on every machine.
    k past the vocabulary is the vocabulary. On the CPU only the tokens at least as probable as a
    row's k-th are sorted (all of them where a row's probabilities tie there); elsewhere (a GPU)
    the whole rows, in one call."""
    k = min(k, probs.shape[-1])
    if k == 0:
        return torch.zeros((probs.shape[0], 0), dtype=torch.long, device=probs.device)
    if probs.device.type != "cpu":
        return torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :k]
    kth = probs.topk(k, dim=-1).values[:, -1:]  # [n, 1]
    out = []
    for row, t in zip(probs, kth):
        cand = (row >= t).nonzero().squeeze(1)  # ascending ids
        out.append(cand[torch.sort(row[cand], descending=True, stable=True).indices[:k]])
    return torch.stack(out) if out else torch.zeros((0, k), dtype=torch.long, device=probs.device)


def _new_records(n: int, soft: torch.Tensor, ids: torch.Tensor, p_top: torch.Tensor, max_steps: int,
                 record_curve: bool) -> TuneResult:
    """The records of n rows before their first step (torch tensors while they are tuned)."""
    k = p_top.shape[1]
    return TuneResult(
        kl_min=torch.full((n,), float("inf"), dtype=torch.float64),
        q_entropy=torch.full((n,), float("nan"), dtype=torch.float64),
        best_step=torch.full((n,), -1, dtype=torch.long),
        steps=torch.zeros(n, dtype=torch.long),
        early_stopped=torch.zeros(n, dtype=torch.bool),
        stop_reason=torch.zeros(n, dtype=torch.long),
        status=["ok"] * n,
        best_soft=soft.clone(),
        best_ids=ids.clone(),
        curve=torch.full((n, max_steps), float("nan")) if record_curve else None,
        p_top_ids=p_top.clone(),
        q_on_p_top=torch.full((n, k), float("nan")),
        q_top_ids=torch.full((n, k), -1, dtype=torch.long),
        q_top_probs=torch.full((n, k), float("nan")),
    )


def _copy(value):
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else list(value) if isinstance(value, list) else value


class _Batch:
    """The rows of one batch while they are tuned.

    ``rec`` holds the rows' records (a :class:`TuneResult` of tensors, indexed by row of the
    batch; its prompts hold every position: ``best_soft`` [n, L, d], ``best_ids`` [n, L]); the
    rest is the working state of the rows still tuned (``active``). ``soft`` are the rows'
    starting vectors of every position ([n, L, d]; [n, 0, d] where no row of the tuning call has
    a soft position, and then ``best_soft`` too), ``ids`` their starting tokens ([n, L]) and
    ``mask`` ([n, L] bool, default ``cfg.soft_mask`` in every row) which positions of each row
    are soft."""

    # working state saved in a checkpoint besides ``rec``, ``theta`` and the AdamW moments
    WORK = ("since", "active", "ids", "changed", "converged")

    def __init__(self, ctx: TuningContext, target_p, soft, ids, cfg: TuneConfig, record_curve: bool, mask=None):
        self.model, self.cfg, self.bos = ctx.loaded.model, cfg, ctx.bos_kv
        self.embed = self.model.get_input_embeddings()
        self.weight = self.embed.weight
        self.device = target_p.device
        self.dtype = self.weight.dtype
        self.target = target_p
        self.logp = log_of(target_p)  # the targets' logarithms, once per batch
        n = target_p.shape[0]
        self.row_mask = row_masks(cfg, n) if mask is None else mask.cpu()
        self.any_soft, self.any_hard = bool(self.row_mask.any()), bool((~self.row_mask).any())
        # each row's hard positions left to right (then its soft ones), and their number
        self.row_hard_order = torch.stack([torch.cat([(~m).nonzero().flatten(), m.nonzero().flatten()])
                                           for m in self.row_mask]) if n else torch.zeros((0, cfg.prefix_len), dtype=torch.long)
        self.row_n_hard = (~self.row_mask).sum(1)
        self.blocked = ~ctx.allowed.to(self.device)
        self.p_top = top_ids(target_p, min(cfg.top_k, target_p.shape[1]))  # [n, k]: the target tokens whose q is recorded
        self.rec = _new_records(n, soft, ids, self.p_top.cpu(), cfg.max_steps, record_curve)
        self.since = torch.zeros(n, dtype=torch.long)  # steps since the best KL last gained min_delta
        self.active = torch.arange(n)
        self.theta = torch.nn.Parameter(soft.to(self.device, copy=True))
        self.opt = self._adamw() if self.any_soft else None
        self.ids = ids.to(self.device, copy=True)
        self.changed = torch.zeros(n, dtype=torch.bool)  # a hard token changed in this sweep
        self.converged = torch.zeros(n, dtype=torch.bool)
        self._active_targets()

    def _active_targets(self) -> None:
        """The active rows' targets and their logarithms, kept while the rows stay (a batch's
        step reads them without indexing [B, |V|] every step), and their soft masks."""
        everyone = len(self.active) == len(self.target)
        rows = self.active.to(self.device)
        self.p_active = self.target if everyone else self.target[rows]
        self.logp_active = self.logp if everyone else self.logp[rows]
        self.mask_active = self.row_mask[self.active].to(self.device)

    def _adamw(self):
        return torch.optim.AdamW([self.theta], lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def state(self) -> dict:
        """Everything the rest of this batch's tuning depends on (for a checkpoint)."""
        out = {name: _copy(getattr(self, name)) for name in self.WORK}
        out["rec"] = {name: _copy(value) for name, value in vars(self.rec).items()}
        out["theta"] = _copy(self.theta)
        if self.opt is not None and self.opt.state.get(self.theta):
            out["adamw"] = {k: _copy(v) for k, v in self.opt.state[self.theta].items()}
        return out

    def load(self, state: dict) -> None:
        """Continue from :meth:`state` of the same rows."""
        for name in self.WORK:
            setattr(self, name, state[name].to(self.device) if name == "ids" else state[name])
        self.rec = TuneResult(**state["rec"])
        self._active_targets()
        self.theta = torch.nn.Parameter(state["theta"].to(self.device))
        if self.opt is not None:
            self.opt = self._adamw()
            if "adamw" in state:
                self.opt.state[self.theta] = {k: v.to(self.device) if k != "step" else v for k, v in state["adamw"].items()}

    def scratch_bytes(self) -> tuple[int, int]:
        """(bytes per row, fixed bytes) a step holds besides what its forward pass saves and the
        |V|-sized arrays :data:`distreach.memory.PER_ROW_VOCAB_ARRAYS` counts (a hard position's
        scores over the vocabulary are one of those): with ``candidates`` above 1, the candidates
        scored at once (:meth:`_best_candidate`: 4 per row)."""
        if not (self.any_hard and self.cfg.candidates > 1):
            return 0, 0
        return 4 * CANDIDATE_VOCAB_ARRAYS * 4 * self.target.shape[1], 0

    def inputs(self, soft, hard_emb, mask=None):
        """The prefixes' input embeddings: ``soft`` ([B, L, d]) where ``mask`` (the active
        rows' by default) says soft, ``hard_emb`` (the tokens' embeddings) elsewhere."""
        if not self.any_soft:
            return hard_emb
        mask = self.mask_active if mask is None else mask
        return torch.where(mask[..., None], soft.to(self.dtype), hard_emb)

    def losses(self, x, rows=None, past=None):
        """The forward pass: per-row KL(p || q) of the next token after the prefixes ``x``, and
        log q; ``rows`` (indices into the batch) are the rows whose targets p the prefixes are
        scored against, the active rows by default. The BOS position (the same in every row and
        step) enters as its keys and values, computed once (:func:`_bos_cache`) and expanded over
        the rows; ``past`` (keys and values per layer, [B or 1, heads, n, d_head]) replaces them
        with those of the n positions before ``x``."""
        if rows is None and x.shape[0] != len(self.p_active):
            raise RuntimeError(f"{x.shape[0]} prefixes for {len(self.p_active)} active rows")
        cache = self.cache(self.bos if past is None else past, x.shape[0])
        logits = last_logits(self.model(inputs_embeds=x, cache=cache, use_cache=cache is not None, logits_to_keep=1).logits)
        logq = torch.log_softmax(logits, -1)
        if rows is None:
            return kl(self.p_active, logq, self.logp_active), logq
        return kl(self.target[rows], logq, self.logp[rows]), logq

    def cache(self, past, B: int):
        """A cache holding ``past`` (keys and values per layer) for B rows, or None for no positions."""
        if not past or not past[0][0].shape[2]:
            return None
        from transformers import DynamicCache

        return DynamicCache([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in past], config=self.model.config)

    def step(self, step: int) -> torch.Tensor:
        """One forward/backward/update of the active rows; returns the mask of rows kept."""
        rows = self.active.to(self.device)
        hard_emb = self.embed(self.ids).detach().requires_grad_(self.any_hard)
        loss_rows, logq = self.losses(self.inputs(self.theta, hard_emb))
        keep = self._record(step, loss_rows.detach(), logq)
        if not keep.any():
            return keep
        keep_dev = keep.to(self.device)
        loss_rows[keep_dev].sum().backward()
        if self.any_hard:
            self._hard_update(step, hard_emb.grad, loss_rows.detach(), rows)
        if self.opt is not None:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        if not keep.all():
            self._drop(keep, keep_dev)
        return keep

    @torch.no_grad()
    def _record(self, step: int, loss_rows: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
        """Update the active rows' records with this step's KL; returns the mask of rows kept."""
        cfg, act, rec = self.cfg, self.active, self.rec
        lc = loss_rows.double().cpu()
        finite = torch.isfinite(lc)
        improved = finite & (lc < rec.kl_min[act])
        gained = finite & is_gain(lc, rec.kl_min[act], cfg.min_delta)
        if improved.any():
            idx, dev_idx = act[improved], improved.to(self.device)
            best = logq if improved.all() else logq[dev_idx]  # [improved, |V|]: copied only when some did not
            rec.kl_min[idx] = lc[improved]
            # improved rows have a finite KL, so every entry of their log q is finite
            rec.q_entropy[idx] = entropy(best, finite=True).double().cpu()
            rec.best_step[idx] = step
            rec.best_soft[idx] = self.theta.detach()[dev_idx].float().cpu()
            rec.best_ids[idx] = self.ids[dev_idx].cpu()
            if rec.q_top_ids.shape[1]:
                top = best.topk(rec.q_top_ids.shape[1], dim=-1)
                rec.q_top_ids[idx] = top.indices.cpu()
                rec.q_top_probs[idx] = top.values.exp().cpu()
                rec.q_on_p_top[idx] = best.gather(1, self.p_top[idx.to(self.device)]).exp().cpu()
        if rec.curve is not None:
            rec.curve[act, step] = lc.float()
        self.since[act] = torch.where(gained, 0, self.since[act] + 1)
        rec.steps[act] += 1
        for r in act[~finite].tolist():
            rec.status[r] = f"non-finite KL at step {step}"
        reached = rec.kl_min[act] <= cfg.stop_kl_nats
        stale = self.since[act] >= cfg.patience
        stop = ~finite | stale | self.converged[act] | reached
        rec.early_stopped[act[stop & finite]] = True
        # where several apply, the last of this order is recorded: non-finite, target reached, converged, patience
        for code, why in ((1, stale), (3, self.converged[act]), (2, reached), (4, ~finite)):
            rec.stop_reason[act[stop & why]] = code
        return ~stop

    @torch.no_grad()
    def _hard_update(self, step, grad, current, rows):
        """Each active row with hard positions swaps the token at its hard position
        ``step % n_hard`` (left to right over its hard positions)."""
        cfg = self.cfg
        n_hard = self.row_n_hard[self.active]  # on the CPU: the indexing below waits for no device
        h_cpu = (n_hard > 0).nonzero().flatten()  # the active rows with hard positions
        if not len(h_cpu):
            return
        j = step % n_hard[h_cpu]
        pos_cpu = self.row_hard_order[self.active[h_cpu], j]  # [Bh]: the position each of them updates
        h, pos = h_cpu.to(self.device), pos_cpu.to(self.device)
        g = grad[h, pos].float()  # [Bh, d]
        # argmin over x of (e(x) - theta_j) . g: theta_j . g is the same for every x, and an
        # embedding scale (Gemma) is a positive factor, so W g ranks the tokens
        scores = (g.to(self.dtype) @ self.weight.T).float()  # [Bh, V_in]
        scores[:, self.blocked] = float("inf")
        old = self.ids[h, pos].clone()
        if cfg.candidates == 1:
            new = scores.argmin(-1)
        else:
            top = scores.topk(min(cfg.candidates, int((~self.blocked).sum())), dim=-1, largest=False).indices
            new = self._best_candidate(h, pos, top, current[h], rows[h])
        self.ids[h, pos] = new
        # a pure hard row whose sweep changed nothing has converged
        pure = n_hard[h_cpu] == self.ids.shape[1]
        who = self.active[h_cpu][pure]  # those rows, by row of the batch
        self.changed[who] |= (new != old).cpu()[pure]
        ends = who[(j == n_hard[h_cpu] - 1)[pure]]  # at the end of a sweep
        self.converged[ends] = ~self.changed[ends]
        self.changed[ends] = False

    def _best_candidate(self, h, pos, top, current, rows):
        """Of each of the active rows ``h``'s k candidate tokens for its hard position ``pos``,
        the one with the lowest exact loss if it is lower than the current loss, else the
        current token."""
        B, k = top.shape
        soft = self.theta.detach()[h].repeat_interleave(k, 0)
        ids = self.ids[h].repeat_interleave(k, 0)
        ids[torch.arange(B * k, device=ids.device), pos.repeat_interleave(k)] = top.reshape(-1)
        mask = self.mask_active[h].repeat_interleave(k, 0)
        cand_rows = rows.repeat_interleave(k)
        chunk = B * 4
        losses = []
        for lo in range(0, B * k, chunk):
            sl = slice(lo, lo + chunk)
            x = self.inputs(soft[sl], self.embed(ids[sl]), mask[sl])
            losses.append(self.losses(x, cand_rows[sl])[0])
        cand = torch.cat(losses).view(B, k)
        best, arg = cand.min(-1)
        pick = top.gather(1, arg[:, None]).squeeze(1)
        return torch.where(best < current, pick, self.ids[h, pos])

    def _drop(self, keep, keep_dev):
        if self.opt is not None:
            self.theta, self.opt = keep_rows(self.opt, self.theta, keep_dev)
        else:
            self.theta = torch.nn.Parameter(self.theta.detach()[keep_dev])
        self.ids = self.ids[keep_dev]
        self.active = self.active[keep]
        self._active_targets()


@dataclass
class _Run:
    """What every batch of one :func:`tune` call shares: the model's side (the tuning context),
    the rows' targets and starting prefixes, and the checkpoint."""

    ctx: TuningContext
    target: torch.Tensor  # [n, |V|] on the CPU
    soft: torch.Tensor  # [n, L, d] starting vectors (read at soft positions)
    ids: torch.Tensor  # [n, L] starting tokens (read at hard positions)
    cfg: TuneConfig
    record_curve: bool
    checkpoint: Checkpoint
    on_step: Callable[[int, int], None] | None = None
    row_steps: int = 0  # steps of rows run so far in this call
    resumed_from: dict | None = None  # where this call picked up a checkpoint (TuneResult.work)
    batch_rows: list[int] = field(default_factory=list)  # rows of each batch tuned, in order (TuneResult.work)
    make_batch: Callable[[slice], "_Batch"] | None = None  # the batch of rows sl (default: a _Batch)
    mask: torch.Tensor | None = None  # [n, L] bool: each row's soft positions (default cfg.soft_mask)


def tune(
    loaded,
    target_probs,
    init_seeds,
    cfg: TuneConfig,
    on_step: Callable[[int, int], None] | None = None,
    record_curve: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> TuneResult:
    """Tune one prefix per row; row i targets ``target_probs[i]`` from ``init_seeds[i]``.

    ``loaded`` is a :class:`distreach.models.LoadedModel` or its :class:`TuningContext` under
    ``cfg`` (:func:`tuning_context`; made here from a LoadedModel); ``target_probs`` is
    [n, |V|] (probabilities, rows summing to 1). ``on_step(step, n_active)`` is
    called after every step of every batch with the rows still being tuned.
    ``record_curve`` keeps every row's KL at every step.

    With ``checkpoint`` (a file path), the whole tuning state (finished batches, and the
    current batch's prefixes, AdamW moments, best-so-far values and counters) is saved
    there at most every ``checkpoint_seconds`` (0: after every step); a later call with the
    same inputs resumes from it and ends with results bit-identical to an uninterrupted
    run (on the CPU). A checkpoint of other inputs is ignored. The caller removes the file
    once the results are stored. The result's ``work`` says what the call did (:attr:`TuneResult.work`).
    Method ``gcg`` is
    :func:`distreach.gcg.tune_gcg`; rows of several settings tuned together are :func:`tune_groups`."""
    if cfg.method == "gcg":
        from .gcg import tune_gcg

        return tune_gcg(loaded, target_probs, init_seeds, cfg, on_step, record_curve, checkpoint, checkpoint_seconds)
    return tune_groups(loaded, [(target_probs, init_seeds, cfg)], on_step, record_curve, checkpoint,
                       checkpoint_seconds)[0]


def row_settings_apart(cfgs: list[TuneConfig]) -> str | None:
    """Why rows of these settings cannot share a batch (a setting other than
    :data:`distreach.methods.ROW_SETTINGS` differs, or a method the engine's batches do not mix),
    or None."""
    for cfg in cfgs:
        if cfg.method not in ROW_METHODS:
            return f"method {cfg.method} is not one of {ROW_METHODS}"
    for key in fields(TuneConfig):
        if key.name not in ROW_SETTINGS and len({repr(getattr(c, key.name)) for c in cfgs}) > 1:
            return f"they differ in {key.name}"
    return None


def tune_groups(
    loaded,
    groups: list[tuple],
    on_step: Callable[[int, int], None] | None = None,
    record_curve: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> list[TuneResult]:
    """:func:`tune` of several groups of rows in the same batches, one result per group: each
    group is ``(target_probs, init_seeds, cfg)``, and the settings differ only in which
    positions are soft (:data:`distreach.methods.ROW_SETTINGS`: soft, hybrid and hard prompts of
    one length). A row's result is the one it gets in a call of its own up to the float
    rounding of batches of another shape. Each result's ``work`` is the whole call's."""
    cfgs = [cfg for _, _, cfg in groups]
    if not cfgs:
        return []
    if why := row_settings_apart(cfgs):
        raise DistreachError(f"tuning: rows of these settings cannot be tuned together: {why}" if len(cfgs) > 1 else
                             f"tuning: tune_groups tunes {ROW_METHODS} rows; {why} (tune() tunes it)")
    cfg = cfgs[0]
    targets = [_checked_targets(model_of(loaded), p, seeds) for p, seeds, _ in groups]  # refused before any work
    ctx = tuning_context(loaded, cfg)
    loaded = ctx.loaded
    weight, embed = loaded.embeddings, loaded.model.get_input_embeddings()
    sizes = [t.shape[0] for t in targets]
    target = torch.cat(targets)
    seeds = [s for _, group_seeds, _ in groups for s in group_seeds]
    soft, drawn = init_rows(embed, weight, ctx.allowed, seeds, cfg)
    mask = torch.cat([row_masks(c, n) for c, n in zip(cfgs, sizes)])
    any_soft = bool(mask.any())
    if not any_soft:  # hard prompts only: no soft vectors to carry
        soft = soft.new_zeros((soft.shape[0], 0, soft.shape[2]))
    run = None
    if target.shape[0]:
        key = checkpoint_key(loaded, target, seeds, list(zip(cfgs, sizes)), record_curve) if checkpoint is not None else ""
        run = _Run(ctx, target, soft, drawn, cfg, record_curve, Checkpoint(checkpoint, key, checkpoint_seconds), on_step,
                   mask=mask)
        res = _concat(_run_batches(run, cfg.batch_size or AUTO_BATCH.get(ctx.device.type, 64)))
        res.init_ids = drawn.numpy()
        log.info("%d row-steps run%s", run.row_steps, "" if run.resumed_from is None else
                 " after resuming from row {row} at step {step}".format(**run.resumed_from))
    work = work_of(run)
    out, lo = [], 0
    for c, n in zip(cfgs, sizes):
        if not n:
            part = _empty_result(c, weight.shape[1], target.shape[1])
        else:
            part = res.take(slice(lo, lo + n))
            soft_at = np.asarray(c.soft_mask)
            part.best_ids = part.best_ids[:, ~soft_at]
            if any_soft:
                part.best_soft = part.best_soft[:, soft_at]
        part.work = work
        out.append(part)
        lo += n
    return out


def _checked_targets(loaded, target_probs, init_seeds) -> torch.Tensor:
    target = torch.as_tensor(np.asarray(target_probs), dtype=torch.float32)
    if target.ndim != 2 or target.shape[1] != loaded.vocab_size:
        raise DistreachError(
            f"targets have shape {tuple(target.shape)}, expected [n, {loaded.vocab_size}] for model {loaded.name}"
        )
    if len(init_seeds) != target.shape[0]:
        raise DistreachError(f"{len(init_seeds)} init seeds for {target.shape[0]} target rows")
    check_support(loaded, target)
    return target


def check_support(loaded, target: torch.Tensor) -> None:
    """Refuse targets [n, |V|] that put probability on output rows past the tokenizer's tokens
    (padding rows no prompt can be asked to produce)."""
    support = vocab_support(loaded.tokenizer, target.shape[1])
    if support < target.shape[1] and (target[:, support:] > 0).any():
        raise DistreachError(
            f"targets put probability on output rows {support}.. of model {loaded.name}, which are padding "
            f"past its tokenizer's {support} tokens"
        )


def work_of(run: "_Run | None", **extra) -> dict:
    """:attr:`TuneResult.work` of a call that ran ``run`` (None: no rows), with a method's ``extra`` keys."""
    return {"row_steps": run.row_steps if run else 0, "resumed_from": run.resumed_from if run else None,
            "batch_rows": run.batch_rows if run else [], **extra}


def _empty_result(cfg: TuneConfig, d: int, vocab: int) -> TuneResult:
    empty = np.zeros(0)
    k = min(cfg.top_k, vocab)
    return TuneResult(empty, empty, empty.astype(int), empty.astype(int), empty.astype(bool), empty.astype(int), [],
                      np.zeros((0, cfg.n_soft_positions, d), np.float32),
                      np.zeros((0, cfg.prefix_len - cfg.n_soft_positions), np.int64),
                      init_ids=np.zeros((0, cfg.prefix_len), np.int64),
                      p_top_ids=np.zeros((0, k), np.int64), q_on_p_top=np.zeros((0, k), np.float32),
                      q_top_ids=np.zeros((0, k), np.int64), q_top_probs=np.zeros((0, k), np.float32))


def _run_batches(run: _Run, bs: int) -> list[TuneResult]:
    """Tune the rows in batches of ``bs`` (resuming from the checkpoint if there is one);
    the records of each batch."""
    n = run.target.shape[0]
    parts, lo, resume = [], 0, run.checkpoint.read()
    if resume is not None:
        parts, lo, bs = [TuneResult(**p) for p in resume["parts"]], resume["lo"], resume["bs"]
        step = resume["step"] + 1 if resume.get("batch") else 0
        run.resumed_from = {"row": lo, "step": step}
        log.info("resuming from checkpoint %s: %d of %d rows done, the batch from row %d at step %d", run.checkpoint.path,
                 lo, n, lo, step, extra={"announce": True})
    if run.ctx.device.type == "cpu" and lo < n:  # no OOM to catch on a CPU: a batch must fit before it starts
        wanted = min(bs, n - lo)
        where = f"tuning model {run.ctx.loaded.name} with prompts of {run.cfg.prefix_len} positions"
        one = _probe_batch(run, 1)  # its scratch memory, and the one-row forward pass
        fit = rows_that_fit(lambda k: _probe_forward(one if k == 1 else _probe_batch(run, k)),
                            run.ctx.loaded.model.parameters(), run.target.shape[1], n, wanted, where, one.scratch_bytes())
        del one
        if fit < wanted and resume is not None and resume.get("batch") is not None:  # a batch under way keeps its size
            raise DistreachError(f"{where}: the checkpoint {run.checkpoint.path} holds a batch of {wanted} rows, more than "
                                 f"fit in the memory free now ({fit}): free memory, or delete the checkpoint to start "
                                 f"again in smaller batches")
        bs = fit if fit < wanted else bs
    while lo < n:
        done = [vars(p) for p in parts]
        rec, bs = _halving_on_oom(lambda size: _run_batch(run, lo, size, done, resume), bs, lo)
        resume = None
        parts.append(rec)
        lo += bs
        if lo < n:
            run.checkpoint.save({"parts": [vars(p) for p in parts], "lo": lo, "bs": bs, "step": -1, "batch": None})
    run.batch_rows = [len(p.kl_min) for p in parts]
    return parts


def _probe_batch(run: _Run, k: int) -> "_Batch":
    """A batch of the first ``k`` rows, never stepped (for :func:`distreach.memory.rows_that_fit`);
    its targets a copy, so that what it saves counts k rows, not a view of all of them."""
    if run.make_batch is not None:
        return run.make_batch(slice(0, k))
    return _Batch(run.ctx, run.target[:k].clone(), run.soft[:k], run.ids[:k], run.cfg, False,
                  None if run.mask is None else run.mask[:k])


def _probe_forward(batch: "_Batch"):
    """The forward pass of a step of ``batch``'s rows, every input position requiring a gradient."""
    return batch.losses(batch.inputs(batch.theta, batch.embed(batch.ids).detach().requires_grad_(True)))


def _halving_on_oom(attempt: Callable[[int], TuneResult], bs: int, lo: int) -> tuple[TuneResult, int]:
    """``attempt(bs)``, and on CUDA out-of-memory again with half the batch size: rows never
    interact, so the batch restarts from its inits and only float rounding changes."""
    while True:
        try:
            return attempt(bs), bs
        except torch.OutOfMemoryError:
            if bs == 1:
                raise
            torch.cuda.empty_cache()
            bs = max(1, bs // 2)
            log.warning("out of memory: retrying rows %d.. with batch size %d", lo, bs)


def _run_batch(run: _Run, lo: int, bs: int, done: list[dict], resume: dict | None) -> TuneResult:
    """Tune rows ``lo .. lo + bs`` to the end (from the checkpointed step of ``resume`` if it
    holds this batch); ``done`` are the records of the batches before, for checkpoints."""
    sl = slice(lo, lo + bs)
    batch = run.make_batch(sl) if run.make_batch is not None else _Batch(
        run.ctx, run.target[sl].to(run.ctx.device), run.soft[sl], run.ids[sl], run.cfg, run.record_curve,
        None if run.mask is None else run.mask[sl])
    first = 0
    if resume is not None and resume.get("batch") is not None and resume["lo"] == lo and resume["bs"] == bs:
        batch.load(resume["batch"])
        first = resume["step"] + 1
    for step in range(first, run.cfg.max_steps):
        if not len(batch.active):
            break
        keep = batch.step(step)
        run.row_steps += len(keep)
        if run.on_step is not None:
            run.on_step(step, int(keep.sum()))
        run.checkpoint.save_if_due(
            lambda: {"parts": done, "lo": lo, "bs": bs, "step": step, "batch": batch.state()})
        if not keep.any():
            break
    return batch.rec


def _concat(parts: list[TuneResult]) -> TuneResult:
    """One result of the records of all batches, as numpy arrays."""

    def cat(name):
        values = [getattr(p, name) for p in parts]
        if name == "status":
            return [s for v in values for s in v]
        if name == "work":
            return None
        return None if values[0] is None else torch.cat(values).numpy()

    return TuneResult(**{f.name: cat(f.name) for f in fields(TuneResult)})


@torch.no_grad()
def prompt_kl(loaded, target_probs, prompts: list[list[int]], bos: str | None = None) -> np.ndarray:
    """KL(p_i || q_i) in nats where q_i is the model's next-token distribution after the
    token ids ``prompts[i]`` (after the BOS token of the policy ``bos``), e.g. a hard prompt typed
    back in. ``loaded`` is a LoadedModel (``bos`` None: the default policy, ``auto``) or a
    :class:`TuningContext`, whose BOS id is used (``bos`` None: the policy it was made for; another
    policy is an error)."""
    if isinstance(loaded, TuningContext):
        if bos is not None and loaded.made_for["bos"] != bos:
            raise DistreachError(f"a tuning context made for BOS policy {loaded.made_for['bos']} used with policy {bos}")
        bos_id, loaded = loaded.bos_id, loaded.loaded
    else:
        bos_id = resolve_bos(loaded.tokenizer.bos_token_id, TuneConfig.bos if bos is None else bos, loaded.name)
    model = loaded.model
    device = loaded.embeddings.device
    out = np.empty(len(prompts))
    for i, ids in enumerate(prompts):
        ids = ([] if bos_id is None else [bos_id]) + list(ids)
        if not ids:
            out[i] = float("nan")
            continue
        logits = model(torch.tensor([ids], device=device), logits_to_keep=1).logits[:, -1].float()
        p = torch.as_tensor(np.asarray(target_probs[i]), dtype=torch.float32, device=device)[None]
        out[i] = float(kl(p, torch.log_softmax(logits, -1)))
    return out
