"""Stand-ins for the paper's hub models: a tiny random model of the same ``transformers`` class
with the same special-token layout, built offline (the tokenizer is trained on the fly on a small
English corpus), so that the paper study can run end to end without the hub.

=================  ========================  ====================================================
stand-in           class                     special-token layout (as the hub model's)
=================  ========================  ====================================================
``gpt2``           GPT2LMHeadModel           BOS = EOS = ``<|endoftext|>``; tied head
``llama3``         LlamaForCausalLM          ``<|begin_of_text|>`` BOS, ``<|end_of_text|>``,
                                             ``<|reserved_special_token_N|>``; untied head
``llama3-instruct`` LlamaForCausalLM         as llama3, plus the chat header tokens
``falcon``         FalconForCausalLM         no BOS; ``>>TITLE<<``-style specials, ``<|endoftext|>``
``qwen2``          Qwen2ForCausalLM          no BOS; ``<|endoftext|>``, ``<|im_start|>``, ...;
                                             output rows padded past the tokenizer; tied head
``qwen2-instruct`` Qwen2ForCausalLM          as qwen2, EOS ``<|im_end|>``
``gemma3``         Gemma3ForCausalLM         ``<bos>``, ``<unusedN>``, sentencepiece-style
                                             pieces (``▁``); embeddings scaled by sqrt(d)
=================  ========================  ====================================================

A model source ``{stand_in: <arch>, seed: <n>}`` materialises one
(:func:`distreach.models.materialise`); ``write_stand_in(arch, folder, seed)`` saves one as a
model folder (``save_pretrained``) that a ``local:`` model source or ``distreach --model`` reads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import DistreachError

# English words in several parts of speech (for POS tagging), and other text
WORDS = (
    "house table river mountain garden window city doctor teacher bottle chair letter music forest animal "
    "pencil kitchen island market engine flower summer winter morning village bridge castle camera planet "
    "ocean paper school water friend family money story music road child woman night point office "
    "run eat write sing swim build carry throw listen speak climb drive bring teach fly walk read open "
    "happy green quick bright heavy gentle ancient purple honest brave narrow small large young simple "
    "London Paris Berlin Madrid Tokyo Canada Germany Alice Robert Maria Thomas Amazon Microsoft Google "
    "the and of to in is was for on with at by from that this it he she they we you not but or"
).split()

CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) + " ." for i in range(0, len(WORDS), 7)] * 20

RESERVED_LLAMA = 8  # <|reserved_special_token_0..7|> (the 8B has 250)
UNUSED_GEMMA = 6  # <unused0..5> (Gemma-3 has 6,242)
SIZES = dict(hidden=32, layers=2, heads=4, kv_heads=2, ff=64, positions=64)

ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama3": "LlamaForCausalLM",
    "llama3-instruct": "LlamaForCausalLM",
    "falcon": "FalconForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen2-instruct": "Qwen2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}


def _bpe(specials: list[str], metaspace: bool = False, vocab: int = 600):
    """A byte-level BPE (or, with ``metaspace``, a sentencepiece-style BPE writing '▁' for a space)
    trained on :data:`CORPUS`, with ``specials`` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if metaspace:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = sorted(set("".join(CORPUS)) - {" "}) + ["▁"]
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def stand_in_tokenizer(arch: str):
    """The stand-in's tokenizer (a ``PreTrainedTokenizerFast``) with the hub model's special tokens."""
    from transformers import PreTrainedTokenizerFast

    def fast(tok, extra=(), **special):
        out = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
        if extra:
            out.add_special_tokens({"additional_special_tokens": list(extra)})
        return out

    if arch == "gpt2":
        return fast(_bpe(["<|endoftext|>"]), bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    if arch in ("llama3", "llama3-instruct"):
        chat = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        reserved = [f"<|reserved_special_token_{i}|>" for i in range(RESERVED_LLAMA)]
        specials = ["<|begin_of_text|>", "<|end_of_text|>", *chat, *reserved]
        eos = "<|eot_id|>" if arch == "llama3-instruct" else "<|end_of_text|>"
        tok = _bpe([])
        out = fast(tok, bos_token="<|begin_of_text|>", eos_token=eos)
        out.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in (out.bos_token, eos)]})
        return out
    if arch == "falcon":
        specials = [">>TITLE<<", ">>ABSTRACT<<", ">>INTRODUCTION<<", ">>SUMMARY<<", ">>COMMENT<<", ">>ANSWER<<",
                    ">>QUESTION<<", ">>DOMAIN<<", ">>PREFIX<<", ">>SUFFIX<<", ">>MIDDLE<<", "<|endoftext|>"]
        return fast(_bpe(specials), extra=specials[:-1], eos_token="<|endoftext|>")
    if arch in ("qwen2", "qwen2-instruct"):
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|vision_pad|>"]
        eos = "<|im_end|>" if arch == "qwen2-instruct" else "<|endoftext|>"
        return fast(_bpe([]), extra=specials, eos_token=eos, pad_token="<|endoftext|>")
    if arch == "gemma3":
        unused = [f"<unused{i}>" for i in range(UNUSED_GEMMA)]
        specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *unused, "<start_of_turn>", "<end_of_turn>"]
        tok = _bpe(specials[:4], metaspace=True)
        out = fast(tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")
        out.add_tokens(specials[4:], special_tokens=True)
        return out
    raise DistreachError(f"stand-in {arch!r}: not one of {', '.join(ARCHITECTURES)}")


def stand_in_model(arch: str, tokenizer, seed: int = 0):
    """A tiny random model of the stand-in's class for ``tokenizer``."""
    import transformers as tf

    s = SIZES
    n = len(tokenizer)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=n, n_embd=s["hidden"], n_layer=s["layers"], n_head=s["heads"], n_positions=s["positions"], **ids)
        return tf.GPT2LMHeadModel(cfg)
    common = dict(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                  max_position_embeddings=s["positions"], **ids)
    if arch.startswith("llama3"):
        cfg = tf.LlamaConfig(vocab_size=n, intermediate_size=s["ff"], num_key_value_heads=s["kv_heads"],
                             tie_word_embeddings=False, rope_theta=500000.0, **common)
        return tf.LlamaForCausalLM(cfg)
    if arch == "falcon":
        cfg = tf.FalconConfig(vocab_size=n, multi_query=True, parallel_attn=True, new_decoder_architecture=False,
                              alibi=False, bias=False, **common)
        return tf.FalconForCausalLM(cfg)
    if arch.startswith("qwen2"):
        padded = (n // 64 + 2) * 64  # output rows past the tokenizer, as Qwen2.5's 151,936 for 151,665 tokens
        cfg = tf.Qwen2Config(vocab_size=padded, intermediate_size=s["ff"], num_key_value_heads=s["kv_heads"],
                             tie_word_embeddings=True, **common)
        return tf.Qwen2ForCausalLM(cfg)
    if arch == "gemma3":
        cfg = tf.Gemma3TextConfig(vocab_size=n, intermediate_size=s["ff"], num_key_value_heads=s["kv_heads"], head_dim=8,
                                  sliding_window=16, **common)
        return tf.Gemma3ForCausalLM(cfg)
    raise DistreachError(f"stand-in {arch!r}: not one of {', '.join(ARCHITECTURES)}")


def build_stand_in(arch: str, seed: int = 0):
    """The stand-in ``arch`` (random weights from ``seed``): (model, tokenizer)."""
    tok = stand_in_tokenizer(arch)
    model = stand_in_model(arch, tok, seed)
    if type(model).__name__ != ARCHITECTURES[arch]:
        raise DistreachError(f"stand-in {arch}: built {type(model).__name__}, expected {ARCHITECTURES[arch]}")
    return model, tok


def write_stand_in(arch: str, folder, seed: int = 0) -> Path:
    """Save the stand-in ``arch`` (random weights from ``seed``) as a model folder, atomically."""
    from .io import atomic_path

    folder = Path(folder)
    model, tok = build_stand_in(arch, seed)
    with atomic_path(folder, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return folder
