"""Tuned prompts fed back to the model: the next-token distribution after a prompt (and a text),
the KL of a kept prompt against its target, sampled continuations.

A result row keeps its best prompt (:func:`distreach.tuning.soft_prompt_columns`): the soft
positions' embeddings (``soft_positions``, ``soft_prompt``), the hard tokens (``prompt_ids``)
and the BOS token that went first (``bos_token_id``, null for none). The model sees what the
engine fed it: the BOS token's embedding, then the prompt's positions (a soft position's vector
cast to the model's dtype, a hard position's token embedding), then any text's token
embeddings, all as input embeddings of one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import DistreachError
from .infotheory import kl


@dataclass(frozen=True)
class Prompt:
    """A prompt as the engine tuned it: ``soft`` [n_soft, d] float32 vectors at
    ``soft_positions``, ``hard_ids`` at the other positions (in order), after ``bos_id``."""

    prefix_len: int
    soft_positions: tuple[int, ...]
    soft: np.ndarray
    hard_ids: tuple[int, ...]
    bos_id: int | None

    @classmethod
    def from_row(cls, row: dict) -> "Prompt":
        """The kept prompt of a result row (a dict of a collected table's columns)."""
        where = f"row {row.get('target_id')!r} (init {row.get('init_index')})"
        for column in ("prefix_len", "soft_positions", "soft_prompt", "prompt_ids"):
            if column not in row:
                raise DistreachError(f"{where}: no {column} column (a table written before prompts were kept?)")
        L = int(row["prefix_len"])
        positions = tuple(int(i) for i in row["soft_positions"] or ())
        flat = np.asarray(row["soft_prompt"] if row["soft_prompt"] is not None else [], dtype=np.float32)
        hard = tuple(int(i) for i in row["prompt_ids"] or ())
        if len(positions) + len(hard) != L or (positions and flat.size % len(positions)) or (not positions and flat.size):
            raise DistreachError(f"{where}: {len(positions)} soft positions with {flat.size} values and {len(hard)} "
                                 f"hard tokens do not make a prompt of {L} positions")
        soft = flat.reshape(len(positions), -1) if positions else np.zeros((0, 0), np.float32)
        bos = row.get("bos_token_id")
        return cls(L, positions, soft, hard, None if bos is None else int(bos))


def input_embeddings(loaded, prompt: Prompt | None = None, text_ids=(), bos_id: int | None = None) -> torch.Tensor:
    """[1, T, d] inputs in the model's dtype: BOS (``prompt.bos_id``, or ``bos_id`` without a
    prompt), the prompt's positions, then ``text_ids``."""
    embed = loaded.model.get_input_embeddings()
    weight = loaded.embeddings
    if prompt is not None:
        bos_id = prompt.bos_id
        if prompt.soft_positions and prompt.soft.shape[1] != weight.shape[1]:
            raise DistreachError(f"the kept prompt has vectors of size {prompt.soft.shape[1]}, model {loaded.name} "
                                 f"embeds in {weight.shape[1]}")
    with torch.no_grad():

        def tokens(ids):
            return embed(torch.tensor([list(ids)], dtype=torch.long, device=weight.device))[0]

        parts = [tokens([bos_id])] if bos_id is not None else []
        if prompt is not None:
            soft = torch.from_numpy(prompt.soft).to(weight.device, weight.dtype)
            hard = tokens(prompt.hard_ids) if prompt.hard_ids else None
            s = h = 0
            for i in range(prompt.prefix_len):
                if i in prompt.soft_positions:
                    parts.append(soft[s : s + 1])
                    s += 1
                else:
                    parts.append(hard[h : h + 1])
                    h += 1
        if len(text_ids):
            parts.append(tokens(text_ids))
    if not parts:
        raise DistreachError("nothing to feed the model: no BOS token, no prompt and no text")
    return torch.cat(parts)[None]


@torch.no_grad()
def next_token_logprobs(loaded, prompt: Prompt | None = None, text_ids=(), bos_id: int | None = None) -> torch.Tensor:
    """log q over the output rows: the model's next-token distribution after the inputs of
    :func:`input_embeddings` (float32, on the CPU)."""
    x = input_embeddings(loaded, prompt, text_ids, bos_id)
    logits = loaded.model(inputs_embeds=x, logits_to_keep=1).logits[0, -1].float()
    return torch.log_softmax(logits, -1).cpu()


def prompt_kl(loaded, prompt: Prompt, target_probs) -> float:
    """KL(p || q) in nats of the kept ``prompt`` against the target probabilities ``target_probs``
    ([|V|]): what the engine recorded as the row's ``kl_min`` (in nats)."""
    p = torch.as_tensor(np.asarray(target_probs), dtype=torch.float32)[None]
    return float(kl(p, next_token_logprobs(loaded, prompt)[None]))


@torch.no_grad()
def sample(loaded, prompt: Prompt | None, text_ids=(), *, samples: int = 5, max_new_tokens: int = 20, seed: int = 0,
           bos_id: int | None = None) -> list[list[int]]:
    """``samples`` continuations of up to ``max_new_tokens`` tokens after the inputs of
    :func:`input_embeddings`, each token drawn from the model's full distribution (temperature
    1, no top-k or top-p), ending early at the end-of-sequence token; the same for the same
    ``seed``."""
    from transformers import GenerationConfig

    x = input_embeddings(loaded, prompt, text_ids, bos_id)
    eos = loaded.tokenizer.eos_token_id
    cfg = GenerationConfig(do_sample=True, max_new_tokens=max_new_tokens, num_return_sequences=samples, top_k=0,
                           top_p=1.0, temperature=1.0, eos_token_id=eos, pad_token_id=eos if eos is not None else 0)
    mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = loaded.model.generate(inputs_embeds=x, attention_mask=mask, generation_config=cfg)
    rows = []
    for seq in out.tolist():
        if eos is not None and eos in seq:
            seq = seq[: seq.index(eos) + 1]
        rows.append(seq)
    return rows
