"""Tiny random models (hidden 32, 2 layers) with a tiny tokenizer, built on the fly."""

from __future__ import annotations

import pytest
import torch

TINY_WORDS = [f"w{i}" for i in range(90)]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2}
    for w in TINY_WORDS:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")


def tiny_model(arch: str = "llama", seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg)
    else:
        cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
        model = GPT2LMHeadModel(cfg)
    return model, tok


def save_tiny(folder, arch="llama", seed=0):
    model, tok = tiny_model(arch, seed)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Materialised tiny models: {'llama': folder, 'gpt2': folder}."""
    from distreach.models import ModelSpec, materialise

    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for arch in ("llama", "gpt2"):
        src = save_tiny(root / f"src-{arch}", arch)
        out[arch] = root / f"tiny-{arch}"
        materialise(ModelSpec.from_config(f"tiny-{arch}", {"source": {"local": str(src)}}), out[arch])
    return out


@pytest.fixture(scope="session")
def tiny_llama(tiny_dirs):
    from distreach.models import load_materialised

    return load_materialised(tiny_dirs["llama"], dtype="fp32", device="cpu")[0]
