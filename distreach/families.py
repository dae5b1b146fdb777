"""Target families beyond vanilla: outlier (paper Eq. 2-3, App. A), LM-generated (Sec. 5.3),
shuffled and migrated LM-generated (Sec. 5.4), uniform over tokens of one part of speech (App. C).

Every family returns a target table as in :mod:`distreach.targets` (log-probabilities over
one model's vocabulary, with kind, requested and achieved entropy and seed);
:mod:`distreach.targetfamily` makes a configured family's targets for a materialised model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from .errors import DistreachError
from .infotheory import entropy
from .optimrows import keep_rows
from .units import check_unit, from_unit, to_unit
from .seeds import derive_seed
from .tokens import bos_used, ids_of, resolve_bos, usable_mask, vocab_support
from .targets import logprobs, targets_table
from .vanilla import MAX_ITERS, PER_LEVEL, TOLERANCE

# the defaults of the families' counts (the config schema's descriptions of targets.<name> cite them)
LM_PROMPTS, LM_PROMPT_LEN = 100, 10  # lm: prompts, random tokens per prompt
LM_BATCH = 32  # lm: prompts per forward pass
SHUFFLED_COPIES = 5  # shuffled: permutations per target
POS_TOKENS, POS_DRAWS = 100, 100  # pos: tokens per uniform distribution, distributions per tag


# ---------------------------------------------------------------- outlier targets


def max_outlier_mass(h_nats: float, n: int) -> float:
    """App. A: the m in [1/n, 1] with -m log m - (1-m) log((1-m)/(n-1)) = h, by bisection.

    The left side falls from log n at m = 1/n to 0 at m = 1, so m is the largest mass one
    token can hold in a distribution of entropy h over n tokens; k > 1 outliers can hold
    more, so m is feasible for every k."""
    if not 0 <= h_nats <= math.log(n) + 1e-12:
        raise DistreachError(f"outlier targets: entropy {h_nats} nats is outside [0, log n = {math.log(n):.4f}]")

    def f(m):
        rest = 1 - m
        return -m * math.log(m) - (rest * math.log(rest / (n - 1)) if rest > 0 else 0.0)

    lo, hi = 1.0 / n, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if f(mid) > h_nats:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class OutlierSettings:
    """Eq. 3: descend alpha (H - h)^2 - beta * (outlier mass) until the outliers hold at
    least m - delta (Eq. 2) and H is within ``tolerance`` of h."""

    ks: tuple = (1, 5, 10)
    per_level: int = PER_LEVEL
    alpha: float = 100.0
    beta: float = 1.0
    delta: float = 0.01
    tolerance: float = TOLERANCE  # in the grid's unit
    max_iters: int = MAX_ITERS
    lr: float = 0.1
    seed: int = 0


def outlier_targets(vocab_size: int, levels: list[float], unit: str, settings: OutlierSettings, pool=None) -> pa.Table:
    """Outlier targets over ``vocab_size`` tokens for every entropy level (in ``unit``), every
    k and ``per_level`` draws.

    The outlier tokens are drawn at random (seed recorded) from ``pool`` (the usable token ids
    of :mod:`distreach.tokens`; default every id). The logits start random with the
    outliers raised to hold mass m together: from random logits alone the outliers' mass
    gradient, m(1 - m), vanishes and the descent settles on other tokens. With k outliers an
    entropy below log k needs them unequal, so they keep their random differences."""
    check_unit(unit)
    rows = [
        (f"outlier-k{k}-L{li:03d}-r{r}", h, k)
        for li, h in enumerate(levels)
        for k in settings.ks
        for r in range(settings.per_level)
    ]
    tol = from_unit(settings.tolerance, unit)
    pool = torch.arange(vocab_size) if pool is None else torch.as_tensor(np.asarray(pool), dtype=torch.long)
    if len(pool) and int(pool.max()) >= vocab_size:
        raise DistreachError(f"outlier targets: token id {int(pool.max())} outside the vocabulary of {vocab_size}")
    starts = [_outlier_start(tid, from_unit(h, unit), k, vocab_size, pool, settings) for tid, h, k in rows]
    logps, achieved, seeds, masses = [None] * len(rows), [0.0] * len(rows), [s[0] for s in starts], [0.0] * len(rows)
    for k in sorted({k for _, _, k in rows}):  # rows with as many outliers descend together
        group = [i for i, (_, _, kk) in enumerate(rows) if kk == k]
        got, failed = _fit_outliers(starts, group, [from_unit(rows[i][1], unit) for i in group], tol, settings)
        if failed:
            tid, h, _ = rows[group[failed[0]]]
            m = starts[group[failed[0]]][3]
            raise DistreachError(
                f"target {tid}: entropy {h} {unit} with {k} outliers holding >= {m - settings.delta:.2f} "
                f"not reached within {settings.max_iters} iterations; raise max_iters or drop this (h, k)"
            )
        for j, i in enumerate(group):
            logps[i], ent, masses[i] = got[j]
            achieved[i] = to_unit(ent, unit)
    ids = [t for t, _, _ in rows]
    table = targets_table(ids, "outlier", [h for _, h, _ in rows], achieved, unit, seeds, np.stack(logps))
    return table.append_column("n_outliers", pa.array([k for _, _, k in rows], pa.int64())).append_column(
        "outlier_mass", pa.array(masses, pa.float64())
    )


def _outlier_start(tid: str, h_nats: float, k: int, vocab_size: int, pool: torch.Tensor, settings: OutlierSettings):
    """(seed, outlier ids, starting logits, m) of one outlier target: random logits with the
    outliers raised to hold mass m together (keeping their random differences, so they can part)."""
    if not 1 <= k < vocab_size or k > len(pool):
        raise DistreachError(f"target {tid}: {k} outliers in a vocabulary of {vocab_size} ({len(pool)} usable tokens)")
    m = math.floor(max_outlier_mass(h_nats, vocab_size) * 100) / 100
    seed = derive_seed(settings.seed, "outlier", tid)
    gen = torch.Generator().manual_seed(seed)
    outliers = pool[torch.randperm(len(pool), generator=gen)[:k]]
    z = torch.randn(vocab_size, generator=gen)
    rest = torch.ones(vocab_size, dtype=torch.bool)
    rest[outliers] = False
    start = min(max(m, 1e-6), 1 - 1e-6)
    z[outliers] += torch.logsumexp(z[rest], 0) - torch.logsumexp(z[outliers], 0) + math.log(start / (1 - start))
    return seed, outliers, z, m


def _fit_outliers(starts, group: list[int], h_nats: list[float], tol: float, settings: OutlierSettings):
    """Eq. 3's descent on the rows ``group`` of ``starts`` (same number of outliers), each until
    its entropy is within ``tol`` of its h and its outliers hold m - delta; a row that gets
    there leaves the batch (rows are independent: :mod:`distreach.optimrows`). Returns per row
    (log-probabilities, entropy in nats, outlier mass), and the positions in ``group`` of rows
    that never got there."""
    outliers = torch.stack([starts[i][1] for i in group])
    least = torch.tensor([starts[i][3] - settings.delta for i in group], dtype=torch.float64)
    h64, h32 = torch.tensor(h_nats, dtype=torch.float64), torch.tensor(h_nats, dtype=torch.float32)
    z = torch.nn.Parameter(torch.stack([starts[i][2] for i in group]))
    opt = torch.optim.Adam([z], lr=settings.lr)
    out, active = [None] * len(group), torch.arange(len(group))
    for _ in range(settings.max_iters):
        logp = torch.log_softmax(z, -1)
        ent = entropy(logp, finite=True)
        mass = logp.gather(1, outliers[active]).exp().sum(1)
        done = ((ent.double() - h64[active]).abs() <= tol) & (mass.double() >= least[active])
        for j in done.nonzero().flatten().tolist():
            out[int(active[j])] = (logp[j].detach().numpy().copy(), ent[j].item(), mass[j].item())
        if done.all():
            return out, []
        opt.zero_grad()
        (settings.alpha * (ent - h32[active]) ** 2 - settings.beta * mass).sum().backward()
        opt.step()
        if done.any():
            z, opt = keep_rows(opt, z, ~done)
            active = active[~done]
    return out, active.tolist()


# ---------------------------------------------------------------- LM-generated and shuffled


def lm_prompts(loaded, n: int, prompt_len: int, seed: int = 0, kind: str = "lm", bos: str = "auto",
               usable=None) -> tuple[list[torch.Tensor], list[int], int | None]:
    """The inputs :func:`lm_generated` makes its targets from: ``n`` prompts of ``prompt_len``
    random usable token ids after a BOS token as the BOS policy ``bos`` puts one, each drawn from
    its own seed (``derive_seed(seed, kind, r)``); the seeds; and the BOS id used (None: none).
    ``usable`` as there."""
    vocab, inputs = loaded.vocab_size, loaded.embeddings.shape[0]
    if usable is None:
        tok = loaded.tokenizer
        usable, bos_token = usable_mask(tok, inputs), tok.bos_token_id
    elif len(usable) != vocab:
        raise DistreachError(f"usable: {len(usable)} entries, model {loaded.name} has {vocab} output rows")
    else:
        bos_token = loaded.manifest["bos_token_id"]
    pool = torch.from_numpy(ids_of(np.asarray(usable)[:inputs]))  # the ids a prompt may hold
    bos_id = resolve_bos(bos_token, bos, loaded.name)
    head = torch.tensor([] if bos_id is None else [bos_id], dtype=torch.long)
    seeds = [derive_seed(seed, kind, r) for r in range(n)]
    prompts = [
        torch.cat([head, pool[torch.randint(0, len(pool), (prompt_len,), generator=torch.Generator().manual_seed(s))]])
        for s in seeds
    ]
    return prompts, seeds, bos_id


@torch.no_grad()
def lm_generated(loaded, n: int, prompt_len: int, unit: str, seed: int = 0, kind: str = "lm", bos: str = "auto",
                 usable=None) -> pa.Table:
    """The model's next-token distributions after ``n`` prompts of ``prompt_len`` random usable
    token ids, after a BOS token as the tuning's BOS policy ``bos`` puts one (so targets and
    tuned prompts share one input convention; :func:`lm_prompts`). Output rows past the tokenizer (padding) get
    probability 0: the distribution is renormalised over |V|. The columns ``lm_prompt_len``,
    ``lm_bos`` (``bos`` or ``none``: what went first) and ``lm_bos_policy`` record this.

    ``usable``: the model's vocabulary table's ``is_usable`` column (one entry per output row;
    :func:`distreach.models.write_vocab`), read instead of the tokenizer, which ``loaded`` may
    then lack: the BOS token and |V| come from its manifest."""
    prompts, seeds, bos_id = lm_prompts(loaded, n, prompt_len, seed, kind, bos, usable)
    loaded.check_positions(prompt_len + (bos_id is not None), f"prompts of prompt_len {prompt_len}"
                           + (" after BOS" if bos_id is not None else ""))
    vocab = loaded.vocab_size
    support = vocab_support(loaded.tokenizer, vocab) if usable is None else loaded.manifest["vocab_support"]
    ids = [f"{kind}-{r:04d}" for r in range(n)]
    logp = np.full((n, vocab), -np.inf, dtype=np.float32)
    for lo in range(0, n, LM_BATCH):  # prompts of one length: one forward pass per batch
        batch = torch.stack(prompts[lo : lo + LM_BATCH]).to(loaded.embeddings.device)
        logits = loaded.model(batch, logits_to_keep=1).logits[:, -1].float()
        if logits.shape[1] != vocab:
            raise DistreachError(f"model {loaded.name}: output has {logits.shape[1]} entries, expected {vocab}")
        logp[lo : lo + LM_BATCH, :support] = torch.log_softmax(logits[:, :support], -1).cpu().numpy()
    ent = to_unit(entropy(torch.from_numpy(logp)).numpy(), unit)
    table = targets_table(ids, kind, ent, ent, unit, seeds, logp)
    return (
        table.append_column("lm_prompt_len", pa.array([prompt_len] * n, pa.int64()))
        .append_column("lm_bos", pa.array([bos_used(bos_id)] * n, pa.string()))
        .append_column("lm_bos_policy", pa.array([bos] * n, pa.string()))
    )


def shuffled(table: pa.Table, copies: int, seed: int = 0, support: int | None = None) -> pa.Table:
    """``copies`` permutations of each target's token ids among the first ``support`` ids (|V|;
    default all), probabilities kept; padding rows past |V| keep probability 0."""
    logp = logprobs(table)
    support = logp.shape[1] if support is None else support
    ids, src, seeds, out = [], [], [], []
    for i, tid in enumerate(table.column("target_id").to_pylist()):
        for c in range(copies):
            s = derive_seed(seed, "shuffled", tid, c)
            perm = np.concatenate([np.random.default_rng(s).permutation(support), np.arange(support, logp.shape[1])])
            out.append(logp[i][perm])
            ids.append(f"{tid}-shuffled{c}")
            src.append(i)
            seeds.append(s)
    ent = np.asarray(table.column("achieved_entropy"))[src]
    unit = table.column("entropy_unit")[0].as_py()
    made = targets_table(ids, "shuffled", ent, ent, unit, seeds, np.stack(out))
    return made.append_column("source_target_id", table.column("target_id").take(pa.array(src, pa.int64())))


# ---------------------------------------------------------------- migrated


def migration_map(source_forms: list, target_forms: list) -> tuple[np.ndarray, np.ndarray]:
    """Source ids and the target ids with the same surface form (the first target id of each form)."""
    where: dict[str, int] = {}
    for i, s in enumerate(target_forms):
        if s is not None and s not in where:
            where[s] = i
    pairs = [(i, where[s]) for i, s in enumerate(source_forms) if s is not None and s in where]
    if not pairs:
        raise DistreachError("migration: the two vocabularies share no token")
    src, dst = zip(*pairs)
    return np.asarray(src), np.asarray(dst)


def migrate(table: pa.Table, src_ids: np.ndarray, dst_ids: np.ndarray, target_vocab: int, source: str) -> pa.Table:
    """Map source distributions onto the target vocabulary through shared tokens, renormalised;
    the ``kept_mass`` column is the fraction of source mass on shared tokens."""
    p = np.exp(logprobs(table).astype(np.float64))
    out = np.zeros((len(p), target_vocab))
    np.add.at(out.T, dst_ids, p[:, src_ids].T)
    kept = out.sum(1)
    if (kept <= 0).any():
        raise DistreachError(f"migration from {source}: a target keeps no mass on shared tokens")
    out /= kept[:, None]
    with np.errstate(divide="ignore"):
        logp = np.log(out).astype(np.float32)
    unit = table.column("entropy_unit")[0].as_py()
    ent = to_unit(entropy(torch.from_numpy(logp.astype(np.float64))).numpy(), unit)
    ids = [f"migrated-{source}-{t}" for t in table.column("target_id").to_pylist()]
    seeds = table.column("seed").to_pylist()
    t = targets_table(ids, "migrated", ent, ent, unit, seeds, logp)
    return t.append_column("source_model", pa.array([source] * len(ids), pa.string())).append_column(
        "kept_mass", pa.array(kept, pa.float64())
    )


# ---------------------------------------------------------------- POS-uniform (App. C)

DEFAULT_POS_TAGS = ("NOUN", "PROPN", "VERB", "ADJ")


def pos_uniform_targets(
    pos, vocab_size: int, tags: list[str], n_tokens: int, draws: int, unit: str, seed: int = 0, usable=None
) -> pa.Table:
    """For each POS in ``tags``, ``draws`` uniform distributions over ``n_tokens`` distinct
    tokens of that POS (kept rows of a :func:`distreach.pos.pos_table` that are usable tokens:
    ``usable``, a bool mask over ids, default all), with recorded seeds."""
    import polars as pl

    kept = pos.filter(pl.col("kept"))
    if usable is not None:
        kept = kept.filter(pl.Series(np.asarray(usable)[kept["token_id"].to_numpy()]))
    ids, seeds, rows, tag_col, members = [], [], [], [], []
    for tag in tags:
        pool = np.sort(kept.filter(pl.col("pos") == tag)["token_id"].to_numpy())
        if len(pool) < n_tokens:
            raise DistreachError(
                f"POS {tag}: only {len(pool)} tokens of this POS in the vocabulary, {n_tokens} asked for"
            )
        for d in range(draws):
            s = derive_seed(seed, "pos", tag, d)
            chosen = np.sort(np.random.default_rng(s).choice(pool, n_tokens, replace=False))
            if chosen.max() >= vocab_size:
                raise DistreachError(f"POS {tag}: token id {chosen.max()} outside the vocabulary of {vocab_size}")
            row = np.full(vocab_size, -np.inf, dtype=np.float32)
            row[chosen] = -np.log(n_tokens)
            rows.append(row)
            ids.append(f"pos-{tag}-{d:03d}")
            seeds.append(s)
            tag_col.append(tag)
            members.append(chosen.tolist())
    h = to_unit(float(np.log(n_tokens)), unit)
    table = targets_table(ids, "pos", [h] * len(ids), [h] * len(ids), unit, seeds, np.stack(rows))
    return table.append_column("pos", pa.array(tag_col, pa.string())).append_column(
        "support_ids", pa.array(members, pa.list_(pa.int64()))
    )
