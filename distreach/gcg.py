"""GCG for distribution targets: a greedy coordinate gradient search over hard prompts (Zou et al.
2023, as nanoGCG implements it) with KL(p || q) as the loss.

Each step of a row: one forward and backward pass of its current prompt gives the gradient of the
loss with respect to each position's input embedding; ``(e(x) - e(current)) . grad`` ranks every
allowed token x at every position (the linear approximation of the change of the loss, as in the
paper's hard method, Eq. 4), and its ``gcg_topk`` best tokens per position are kept. Then
``gcg_width`` candidate prompts are drawn, each the current prompt with ``gcg_replace`` positions
(at random) set to one of their top tokens (at random); every candidate's KL is computed exactly
(batched forward passes, no gradient; none after a row's last step, whose move would not be
recorded) and the row moves to the best candidate, even if it is worse
than the current prompt (nanoGCG's rule: it lets a search leave a local minimum); the row's answer
is the lowest KL it has met. Rows stop as in :mod:`distreach.engine` (patience, ``stop_kl_nats``,
``max_steps``; the patience is ``GCG_PATIENCE`` unless set), are batched the same way (rows never
interact: each row draws its candidates from its own generator, seeded by its init seed, and its
KLs are its own; only the float rounding of passes over batches of another shape differs, which
can turn a near tie between candidates the other way) and checkpointed the same way.

With ``readable`` (the default), a prompt must be text: its decoded text encodes back to the same
token ids (with the same BOS policy) and holds no replacement character (a prompt cut inside a
multi-byte character decodes to one). Only such candidates are evaluated, and a row starts from
its init tokens where they are such a prompt, else from the first of its seeded redraws that is,
so every prompt a row records, its ``prompt_text`` typed back in gives its ``kl_min`` (in fp32 up to
float rounding; in bf16 up to the rounding of two differently batched forward passes).
"""

from __future__ import annotations

import torch

from dataclasses import replace

from .engine import AUTO_BATCH, TuneConfig, body_kv, TuningContext, _Batch, _Run, _checked_targets, _concat, _draw_ids, \
    _empty_result, _run_batches, init_token_ids, model_of, tuning_context, work_of
from .checkpoint import CHECKPOINT_SECONDS, Checkpoint, checkpoint_key
from .errors import DistreachError
from .memory import CANDIDATE_VOCAB_ARRAYS

REDRAWS = 1000  # seeded redraws of a row's init tokens until they are readable text
AUTO_WIDTH = {"cpu": 64, "cuda": 512}  # gcg_width 0: candidates per row and step


def is_text(tokenizer, ids: list[int]) -> bool:
    """Whether the decoded text of ``ids`` encodes back to ``ids`` and holds no replacement character."""
    return bool(readable_mask(tokenizer, [tokenizer.decode(ids)], torch.tensor([list(ids)], dtype=torch.long))[0])


def readable_mask(tokenizer, texts: list[str], ids: torch.Tensor) -> torch.Tensor:
    """For decoded texts of candidate prompts ``ids`` [n, L], whether each is readable text."""
    back = tokenizer(texts, add_special_tokens=False).input_ids
    rows = ids.tolist()
    return torch.tensor([b == r and "\ufffd" not in t for b, r, t in zip(back, rows, texts)], dtype=torch.bool)


def readable_inits(tokenizer, allowed: torch.Tensor, seeds, prefix_len: int) -> torch.Tensor:
    """[n, prefix_len] init tokens: each row's :func:`distreach.engine.init_token_ids` draw (the
    tokens every other method starts from), or, where they are not readable text, the first of
    its seeded redraws that is."""
    pool = allowed.nonzero().flatten()
    out = []
    for seed in seeds:
        gen, ids = _draw_ids(pool, seed, prefix_len)  # init_token_ids' draw, then the same generator's redraws
        for _ in range(REDRAWS):
            if is_text(tokenizer, ids.tolist()):
                break
            ids = pool[torch.randint(0, len(pool), (prefix_len,), generator=gen)]
        else:
            raise DistreachError(f"tuning.readable: no readable prompt of {prefix_len} tokens in {REDRAWS} draws from "
                                 f"seed {seed}; use a shorter prefix_len or readable: false (--unreadable)")
        out.append(ids)
    return torch.stack(out) if out else torch.zeros((0, prefix_len), dtype=torch.long)


class GCGBatch(_Batch):
    """The rows of one batch while GCG tunes them (every position hard)."""

    WORK = _Batch.WORK + ("gens",)
    PASS = 64  # candidates per forward pass over whole prompts: at least this, 4 per row in larger batches

    def __init__(self, ctx: TuningContext, target_p, ids, cfg: TuneConfig, record_curve: bool, seeds,
                 forwards: list[int]):
        empty = torch.zeros((len(ids), 0, ctx.loaded.embeddings.shape[1]))
        super().__init__(ctx, target_p, empty, ids, cfg, record_curve)
        self.tokenizer = ctx.loaded.tokenizer
        # each row's own candidate draws, seeded by its init seed: no row's draws depend on another's
        self.gens = [torch.Generator().manual_seed(int(s) ^ 0x5EED) for s in seeds]
        self.forwards = forwards  # [n]: candidate prompts evaluated by every batch of the call

    def scratch_bytes(self) -> tuple[int, int]:
        """(bytes per row, fixed bytes) of a step's candidates (:meth:`_move`): the scores of every
        position over the input vocabulary ([L, V_in] fp32), and the candidates scored at once, up
        to 2 * max(4 B, PASS) (:meth:`candidate_losses`), each with its |V|-sized arrays and the
        keys and values of its prompt's positions (measured on this batch's first row)."""
        one = sum(k.nbytes + v.nbytes for k, v in self.prompt_kv()) // len(self.ids)
        per_candidate = CANDIDATE_VOCAB_ARRAYS * 4 * self.target.shape[1] + one
        return 4 * self.ids.shape[1] * self.weight.shape[0] + 2 * 4 * per_candidate, 2 * self.PASS * per_candidate

    def state(self) -> dict:
        out = super().state()
        out["gens"] = [g.get_state() for g in self.gens]
        return out

    def load(self, state: dict) -> None:
        gens = state["gens"]
        super().load(state)
        self.gens = [torch.Generator() for _ in gens]
        for g, s in zip(self.gens, gens):
            g.set_state(s)

    def step(self, step: int) -> torch.Tensor:
        rows = self.active.to(self.device)
        emb = self.embed(self.ids).detach().requires_grad_(True)
        loss_rows, logq = self.losses(emb)
        keep = self._record(step, loss_rows.detach(), logq)
        if not keep.any():
            return keep
        keep_dev = keep.to(self.device)
        loss_rows[keep_dev].sum().backward()
        if not keep.all():  # rows that stop draw no candidates
            self._drop(keep, keep_dev)
        if step + 1 < self.cfg.max_steps:  # a move after the last step would never be recorded
            self.ids = self._move(emb.grad.detach()[keep_dev], rows[keep_dev])
        return keep

    @torch.no_grad()
    def _move(self, grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Each row's best candidate (its current prompt where no candidate is readable)."""
        cfg = self.cfg
        B, L = self.ids.shape
        scores = (grad.to(self.dtype) @ self.weight.T).float()  # [B, L, V_in]: (e(x) - e(cur)) . g up to a constant
        scores[:, :, self.blocked] = float("inf")
        k = min(cfg.gcg_topk, int((~self.blocked).sum()))
        top = scores.topk(k, dim=-1, largest=False).indices.cpu()  # [B, L, k]
        cand = self._draw(top)  # [B, W, L]
        W = cand.shape[1]
        flat = cand.reshape(-1, L)
        ok = torch.ones(len(flat), dtype=torch.bool)
        if cfg.readable:
            ok = readable_mask(self.tokenizer, self.tokenizer.batch_decode(flat.tolist()), flat)
        loss = self.candidate_losses(flat, ok, rows)
        self.forwards[0] += int(ok.sum())
        best, arg = loss.view(B, W).min(-1)
        pick = cand[torch.arange(B), arg]
        return torch.where(torch.isfinite(best)[:, None], pick, self.ids.cpu()).to(self.device)

    @torch.no_grad()
    def candidate_losses(self, flat: torch.Tensor, ok: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """KL of each candidate ``flat`` [B * W, L] (W per row of the batch, in row order) where
        ``ok``, inf elsewhere. A candidate that first differs from its row's prompt at position j
        starts from that prompt's keys and values of the positions before j (computed once per
        step): only positions j.. are computed, the same numbers as the whole prompt's forward pass."""
        B, L = self.ids.shape
        W = len(flat) // B
        of = torch.arange(B).repeat_interleave(W)  # each candidate's row of the batch
        diff = flat != self.ids.cpu()[of]
        first = torch.where(diff.any(-1), diff.int().argmax(-1), L - 1)  # unchanged: only its last position
        kv = self.prompt_kv()
        n = (self.bos[0][0].shape[2] if self.bos else 0) + L  # BOS and prompt positions
        if any(k.shape[2] != n for k, _ in kv):  # a layer keeps a sliding window of them only: whole passes
            first.zero_()
        loss = torch.full((len(flat),), float("inf"))
        base = max(4 * B, self.PASS)  # candidates per whole forward pass: shrinks with the batch when OOM halves it
        for j in range(L):
            idx = (ok & (first == j)).nonzero().flatten()
            chunk = min(base * L // (L - j), 2 * base)  # shorter passes take more candidates, at most twice as many
            for lo in range(0, len(idx), chunk):
                sel = idx[lo: lo + chunk]
                b = of[sel].to(self.device)
                past = [(k[b, :, : k.shape[2] - L + j], v[b, :, : v.shape[2] - L + j]) for k, v in kv] if j else None
                x = self.embed(flat[sel, j:].to(self.device))
                loss[sel] = self.losses(x, rows[b], past)[0].float().cpu()
        return loss

    @torch.no_grad()
    def prompt_kv(self) -> list:
        """Keys and values per layer ([B, heads, BOS + L, d_head]) of the rows' current prompts."""
        return body_kv(self.model, self.embed(self.ids), self.cache(self.bos, len(self.ids)))

    def _draw(self, top: torch.Tensor) -> torch.Tensor:
        """``gcg_width`` candidates per row: the current prompt with ``gcg_replace`` distinct
        positions set to one of their top tokens, drawn from the row's own generator."""
        cfg = self.cfg
        B, L, k = top.shape
        r = cfg.gcg_replace  # at most L (TuneConfig)
        cur = self.ids.cpu()
        out = cur[:, None, :].repeat(1, cfg.gcg_width, 1)
        for b, gen in enumerate(self.gens):
            pos = torch.rand((cfg.gcg_width, L), generator=gen).argsort(-1)[:, :r]  # [W, r]
            pick = torch.randint(0, k, (cfg.gcg_width, r), generator=gen)
            out[b].scatter_(1, pos, top[b][pos, pick])
        return out

    def _drop(self, keep, keep_dev):
        super()._drop(keep, keep_dev)
        self.gens = [g for g, kept in zip(self.gens, keep.tolist()) if kept]


def tune_gcg(loaded, target_probs, init_seeds, cfg: TuneConfig, on_step=None, record_curve: bool = False,
             checkpoint=None, checkpoint_seconds: float = CHECKPOINT_SECONDS):
    """:func:`distreach.engine.tune` for ``cfg.method == "gcg"`` (``loaded``: a LoadedModel or its
    :class:`distreach.engine.TuningContext`)."""
    target = _checked_targets(model_of(loaded), target_probs, init_seeds)  # bad targets refused before any work
    ctx = tuning_context(loaded, cfg)
    d = ctx.loaded.embeddings.shape[1]
    if target.shape[0] == 0:
        res = _empty_result(cfg, d, target.shape[1])
        res.work = work_of(None, candidates=0, gcg_width=cfg.gcg_width)
        return res
    if not cfg.gcg_width:
        cfg = replace(cfg, gcg_width=AUTO_WIDTH.get(ctx.device.type, 64))
    draw = readable_inits if cfg.readable else lambda _, *args: init_token_ids(*args)
    ids = draw(ctx.loaded.tokenizer, ctx.allowed, init_seeds, cfg.prefix_len)
    key = checkpoint_key(ctx.loaded, target, init_seeds, cfg, record_curve) if checkpoint is not None else ""
    run = _Run(ctx, target, torch.zeros((len(ids), 0, d)), ids, cfg, record_curve,
               Checkpoint(checkpoint, key, checkpoint_seconds), on_step)
    seeds, forwards = list(init_seeds), [0]
    # the batch's own copy of its targets: a view of all rows would count them all where memory is measured
    run.make_batch = lambda sl: GCGBatch(ctx, target[sl].to(ctx.device, copy=True), ids[sl], cfg, record_curve,
                                         seeds[sl], forwards)
    res = _concat(_run_batches(run, cfg.batch_size or AUTO_BATCH.get(ctx.device.type, 64)))
    res.init_ids = ids.numpy()
    res.work = work_of(run, candidates=forwards[0], gcg_width=cfg.gcg_width)
    return res
