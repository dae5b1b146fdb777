"""Tiny random models (hidden 32, 2 layers) with a tiny tokenizer, built on the fly."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import pytest
import torch

# English words, so that the vocabulary and POS stages have something to tag
TINY_WORDS = (
    "house table river mountain garden window city doctor teacher bottle chair letter music "
    "forest animal pencil kitchen island market engine flower summer winter morning village "
    "bridge castle camera planet ocean "
    "run eat write sing swim build carry throw listen speak climb drive bring teach fly "
    "happy green quick bright heavy gentle ancient purple honest brave narrow "
    "London Paris Berlin Madrid Tokyo Canada Germany Alice Robert Maria Thomas Amazon Microsoft "
    "the and of to in is was for on with at by from , . ! "
    "xqz zzv qqp bkt vvw"
).split()
assert len(TINY_WORDS) == len(set(TINY_WORDS)) == 90, len(TINY_WORDS)


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


def write_tiny_gguf(path, seed=0, big_endian=False):
    """A tiny Llama GGUF (hidden 32, 2 layers) with a byte-level BPE tokenizer; returns its token embeddings."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = ["<|endoftext|>"] + list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe"]
    v, d, ff, layers, heads, kv = len(tokens), 32, 64, 2, 4, 2
    w = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE)
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(v)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (v - 1))
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    rng = np.random.default_rng(seed)
    emb = (rng.standard_normal((v, d)) * 0.05).astype(np.float32)
    w.add_tensor("token_embd.weight", emb)

    def rand(name, shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    rand("output.weight", (v, d))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    for i in range(layers):
        rand(f"blk.{i}.attn_q.weight", (d, d))
        rand(f"blk.{i}.attn_k.weight", (kv * d // heads, d))
        rand(f"blk.{i}.attn_v.weight", (kv * d // heads, d))
        rand(f"blk.{i}.attn_output.weight", (d, d))
        rand(f"blk.{i}.ffn_gate.weight", (ff, d))
        rand(f"blk.{i}.ffn_up.weight", (ff, d))
        rand(f"blk.{i}.ffn_down.weight", (d, ff))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return emb


@contextlib.contextmanager
def tiny_cli_home(root):
    """A tiny Llama model folder under ``root`` and DISTREACH_CACHE set to ``root/cache`` while
    the block runs (what the CLI tests share); yields the model folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DISTREACH_CACHE", str(root / "cache"))
    try:
        yield save_tiny(root / "tiny", "llama")
    finally:
        mp.undo()


def run_cli(capsys, *argv):
    """``distreach`` in-process: (exit code, stdout, stderr)."""
    from distreach import cli

    code = cli.main(list(argv))
    stdout, err = capsys.readouterr()
    return code, stdout, err


def load_script(path: Path):
    """A benchmark's or script's module, loaded from its file (they are not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiered(cases, slow, ids=None) -> list:
    """Parameters for ``pytest.mark.parametrize``: the cases whose indices are in ``slow`` marked
    slow, the rest in the fast tier (for cases that each start Snakemake or load a model in a new
    process: the fast tier keeps one or a few of each kind, the whole suite runs them all)."""
    ids = [None] * len(cases) if ids is None else ids
    if len(ids) != len(cases) or not set(slow) <= set(range(len(cases))):
        raise ValueError(f"{len(cases)} cases, {len(ids)} ids, slow indices {sorted(slow)}")
    return [pytest.param(*case, id=i, marks=pytest.mark.slow if k in slow else ()) for k, (case, i) in enumerate(zip(cases, ids))]
