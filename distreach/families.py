"""Target families beyond vanilla: LM-generated (paper Sec. 5.3), shuffled and migrated
LM-generated (Sec. 5.4).

Every family returns a target table as in :mod:`distreach.targets` (log-probabilities over
one model's vocabulary, with kind, requested and achieved entropy and seed).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from .errors import DistreachError
from .infotheory import entropy, to_unit
from .seeds import derive_seed
from .targets import targets_table


# ---------------------------------------------------------------- LM-generated and shuffled


@torch.no_grad()
def lm_generated(loaded, n: int, prompt_len: int, unit: str, seed: int = 0, kind: str = "lm") -> pa.Table:
    """The model's next-token distributions after ``n`` prompts of random token ids."""
    vocab = loaded.vocab_size
    n_in = min(len(loaded.tokenizer), loaded.embeddings.shape[0])
    special = set(loaded.tokenizer.all_special_ids)
    pool = torch.tensor([i for i in range(n_in) if i not in special])
    ids, seeds, logps = [], [], []
    for r in range(n):
        s = derive_seed(seed, kind, r)
        gen = torch.Generator().manual_seed(s)
        prompt = pool[torch.randint(0, len(pool), (prompt_len,), generator=gen)]
        logits = loaded.model(prompt[None].to(loaded.embeddings.device), logits_to_keep=1).logits[0, -1].float()
        logps.append(torch.log_softmax(logits, -1).cpu().numpy())
        ids.append(f"{kind}-{r:04d}")
        seeds.append(s)
    logp = np.stack(logps)
    if logp.shape[1] != vocab:
        raise DistreachError(f"model {loaded.name}: output has {logp.shape[1]} entries, expected {vocab}")
    ent = to_unit(entropy(torch.from_numpy(logp)).numpy(), unit)
    return targets_table(ids, kind, ent, ent, unit, seeds, logp)


def shuffled(table: pa.Table, copies: int, seed: int = 0) -> pa.Table:
    """``copies`` permutations of each target's token ids, probabilities kept."""
    logp = _logprobs(table)
    ids, src, seeds, out = [], [], [], []
    for i, tid in enumerate(table.column("target_id").to_pylist()):
        for c in range(copies):
            s = derive_seed(seed, "shuffled", tid, c)
            perm = np.random.default_rng(s).permutation(logp.shape[1])
            out.append(logp[i][perm])
            ids.append(f"{tid}-shuffled{c}")
            src.append(i)
            seeds.append(s)
    ent = np.asarray(table.column("achieved_entropy"))[src]
    unit = table.column("entropy_unit")[0].as_py()
    return targets_table(ids, "shuffled", ent, ent, unit, seeds, np.stack(out))


def _logprobs(table: pa.Table) -> np.ndarray:
    return table.column("logprobs").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, -1)


# ---------------------------------------------------------------- migrated


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTES = _byte_decoder()


def surface_forms(tokenizer, size: int) -> list[str | None]:
    """The text each token id stands for, with byte-level ('Ġ' = space) and sentencepiece
    ('▁' = space) markers resolved; None for special tokens and for tokens that are not
    whole UTF-8 text (byte fallback pieces, partial characters)."""
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(size, len(tokenizer)))))
    byte_level = sum(1 for p in pieces if p and p.startswith("Ġ")) > sum(1 for p in pieces if p and p.startswith("▁"))
    out: list[str | None] = []
    for i, p in enumerate(pieces):
        if p is None or i in special:
            out.append(None)
            continue
        if byte_level:
            try:
                out.append(bytes(_BYTES[c] for c in p).decode("utf-8"))
            except (KeyError, UnicodeDecodeError):
                out.append(None)
        elif p.startswith("<0x") and p.endswith(">"):
            out.append(None)
        else:
            out.append(p.replace("▁", " "))
    return out + [None] * (size - len(out))


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
    p = np.exp(_logprobs(table).astype(np.float64))
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
