import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distreach.errors import DistreachError
from distreach.models import DTYPES, ModelSpec, attention_for, load_materialised, materialise, read_manifest

from .conftest import save_tiny


def test_materialised_folder_is_safetensors_with_manifest(tiny_dirs):
    folder = tiny_dirs["llama"]
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    m = read_manifest(folder)
    assert m["vocab_size"] == 93 and m["architecture"] == "LlamaForCausalLM"
    assert m["source_kind"] == "local" and len(m["weights_sha256"]) == 64
    assert m["trust_remote_code"] is False
    lm, tok = load_materialised(folder, device="cpu")
    assert lm.vocab_size == 93 and tok.bos_token_id == 1
    assert not any(p.requires_grad for p in lm.model.parameters())


def test_random_init_copy_keeps_architecture_and_tokenizer(tiny_dirs, tmp_path):
    spec = ModelSpec.from_config("copy", {"source": {"random_init": "tiny-llama", "seed": 7}})
    a = materialise(spec, tmp_path / "a", base_dir=tiny_dirs["llama"])
    b = materialise(spec, tmp_path / "b", base_dir=tiny_dirs["llama"])
    c = materialise(ModelSpec.from_config("copy", {"source": {"random_init": "tiny-llama", "seed": 8}}), tmp_path / "c", base_dir=tiny_dirs["llama"])
    base = read_manifest(tiny_dirs["llama"])
    assert a["architecture"] == base["architecture"] and a["vocab_size"] == base["vocab_size"]
    assert a["weights_sha256"] == b["weights_sha256"] != base["weights_sha256"]
    assert c["weights_sha256"] != a["weights_sha256"]
    assert a["source_sha256"] == base["weights_sha256"]
    tw = load_materialised(tmp_path / "a", device="cpu")[0]
    orig = load_materialised(tiny_dirs["llama"], device="cpu")[0]
    assert not torch.equal(tw.embeddings, orig.embeddings)
    assert tw.tokenizer.get_vocab() == orig.tokenizer.get_vocab()


def test_failed_materialisation_leaves_nothing(tmp_path):
    spec = ModelSpec.from_config("m", {"source": {"local": str(tmp_path / "nope")}})
    with pytest.raises(DistreachError, match="models.m.source.local: .* is not a folder"):
        materialise(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(DistreachError, match="models.x.source: give exactly one of"):
        ModelSpec.from_config("x", {"source": {"hf": "a", "local": "b"}})
    with pytest.raises(DistreachError, match="models.g.source.gguf_file: .* does not exist"):
        materialise(ModelSpec.from_config("g", {"source": {"gguf_file": str(tmp_path / "x.gguf")}}), tmp_path / "o")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(DistreachError, match="models.g.source.sha256: .* config pins"):
        materialise(ModelSpec.from_config("g", {"source": {"gguf_file": str(tmp_path / "junk.gguf"), "sha256": "0" * 64}}), tmp_path / "o")
    with pytest.raises(DistreachError, match="junk.gguf: not a GGUF file, or a truncated or corrupt one"):
        materialise(ModelSpec.from_config("g", {"source": {"gguf_file": str(tmp_path / "junk.gguf")}}), tmp_path / "o")
    with pytest.raises(DistreachError, match="GGUF package 'no_such_pkg' is not installed"):
        materialise(ModelSpec.from_config("g", {"source": {"gguf_package": "no_such_pkg", "file": "a.gguf"}}), tmp_path / "o")
    with pytest.raises(DistreachError, match="not a materialised model folder"):
        load_materialised(tmp_path)


def test_trust_remote_code_is_off_unless_configured(tmp_path, monkeypatch):
    """What transformers is asked to load a model and tokenizer with, when converting the source
    and when loading the converted folder: trust_remote_code only where the config says so."""
    import transformers

    asked = []
    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, _cls=cls.__name__, **kw):
            asked.append((_cls, kw.get("trust_remote_code")))
            return _real(*args, **kw)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    src = save_tiny(tmp_path / "src")
    for folder, configured in (("t", {}), ("t2", {"trust_remote_code": True})):
        asked.clear()
        m = materialise(ModelSpec.from_config("t", {"source": {"local": str(src)}, **configured}), tmp_path / folder)
        trust = configured.get("trust_remote_code", False)
        assert m["trust_remote_code"] is trust
        assert json.loads((tmp_path / folder / "distreach_model.json").read_text())["trust_remote_code"] is trust
        # converting the source: its config, tokenizer and weights
        assert {c for c, _ in asked} == {"AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"}
        assert all(t is trust for _, t in asked), (folder, "converting", asked)
        asked.clear()
        load_materialised(tmp_path / folder, device="cpu")  # loading the converted folder (its config too)
        assert {c for c, _ in asked} >= {"AutoModelForCausalLM", "AutoTokenizer"}
        assert all(t is trust for _, t in asked), (folder, "loading", asked)


def test_gguf_file_is_materialised_as_plain_safetensors(tmp_path):
    from distreach.models import sha256_file

    from .conftest import write_tiny_gguf

    emb = write_tiny_gguf(tmp_path / "tiny.gguf")
    digest = sha256_file(tmp_path / "tiny.gguf")
    spec = ModelSpec.from_config("g", {"source": {"gguf_file": str(tmp_path / "tiny.gguf"), "sha256": digest}})
    m = materialise(spec, tmp_path / "g")
    assert m["source_sha256"] == digest and m["vocab_size"] == 260
    assert "quantization_config" not in json.loads((tmp_path / "g" / "config.json").read_text())
    lm, tok = load_materialised(tmp_path / "g", device="cpu")
    assert torch.equal(lm.embeddings, torch.from_numpy(emb))
    assert tok.decode(tok(" the").input_ids) == " the"


def test_an_embedded_source_stands_for_its_registered_source():
    from distreach.config import check_references
    from distreach.embedded import EMBEDDED

    spec = ModelSpec.from_config("lm", {"source": {"embedded": "smollm2"}})
    assert spec.source == EMBEDDED["smollm2"]["source"] and spec.kind == "gguf_package"
    with pytest.raises(DistreachError, match=r"models.lm.source.embedded: 'nosuch' is not an embedded model \(smollm2, gemma3\)"):
        ModelSpec.from_config("lm", {"source": {"embedded": "nosuch"}})
    with pytest.raises(DistreachError, match="config key models.lm.source.embedded: 'nosuch' is not an embedded model"):
        check_references({"models": {"lm": {"source": {"embedded": "nosuch"}}}})


def test_gguf_metadata_is_parsed_once_per_file_and_the_patch_is_undone(monkeypatch):
    """Within gguf_parsed_once, transformers' metadata parse of a file runs once (each caller gets
    its own config), a parse with tensors always runs, and leaving the block (an error too)
    puts transformers' and gguf's functions back."""
    import gguf
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from distreach.models import gguf_parsed_once

    calls = []

    def fake(gguf_checkpoint_path, return_tensors=False, **kw):
        calls.append((gguf_checkpoint_path, return_tensors))
        return {"config": {"layers": [1]}, "tokenizer": {"tokens": ["x"]}}

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", fake)
    reader, names = gguf.GGUFReader, gguf.get_tensor_name_map
    with gguf_parsed_once():
        gguf_utils.load_gguf_checkpoint("/m.gguf")["config"]["layers"].append(2)
        outer = (gguf_utils.load_gguf_checkpoint, gguf.GGUFReader)
        with gguf_parsed_once():  # within another block (the CLI's, then a conversion's): the outer one serves
            assert (gguf_utils.load_gguf_checkpoint, gguf.GGUFReader) == outer
            again = gguf_utils.load_gguf_checkpoint("/m.gguf", return_tensors=False)["config"]
        with pytest.raises(RuntimeError), gguf_parsed_once():
            raise RuntimeError("inside the inner block")
        assert (gguf_utils.load_gguf_checkpoint, gguf.GGUFReader) == outer  # leaving an inner block undoes nothing
        assert gguf.get_tensor_name_map is not names
        gguf_utils.load_gguf_checkpoint("/m.gguf", return_tensors=True)
    assert calls == [("/m.gguf", False), ("/m.gguf", True)]
    assert again == {"layers": [1]}  # one caller's change to its config is not the next one's
    assert gguf_utils.load_gguf_checkpoint is fake and gguf.GGUFReader is reader and gguf.get_tensor_name_map is names
    with pytest.raises(RuntimeError), gguf_parsed_once():
        raise RuntimeError("inside")
    assert gguf_utils.load_gguf_checkpoint is fake and gguf.GGUFReader is reader and gguf.get_tensor_name_map is names
    with gguf_parsed_once():  # a block after the others patches again
        assert gguf_utils.load_gguf_checkpoint is not fake and gguf.GGUFReader is not reader


def test_ggufs_tensor_name_map_is_built_once_per_architecture_within_parsed_once(monkeypatch):
    """transformers asks gguf for the tensor-name map of an architecture once per module of the
    model it maps; within the block that map is built once (the same mapping), and gguf's
    function is put back after."""
    import gguf
    from gguf import tensor_mapping
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from distreach.models import gguf_parsed_once

    built, init = [], tensor_mapping.TensorNameMap.__init__

    def counted(self, *args, **kw):
        built.append(args)
        init(self, *args, **kw)

    monkeypatch.setattr(tensor_mapping.TensorNameMap, "__init__", counted)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=1, vocab_size=50))
    original = gguf.get_tensor_name_map
    ref = gguf_utils.get_gguf_hf_weights_map(model, gguf_utils.TensorProcessor())
    assert len(built) > 10  # a map per module without the block
    built.clear()
    with gguf_parsed_once():
        got = gguf_utils.get_gguf_hf_weights_map(model, gguf_utils.TensorProcessor())
        assert len(built) == 1
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 3) is not gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    assert got == ref and got["blk.1.attn_q.weight"] == "model.layers.1.self_attn.q_proj.weight"
    assert gguf.get_tensor_name_map is original


def _write_gguf(path, fields, big_endian=False):
    """A GGUF file of metadata ``fields`` ((key, type, value); an array's value is (item type,
    items)) and one tensor, written byte by byte: gguf's writer makes no empty arrays."""
    import struct

    import numpy as np
    from gguf import GGUFValueType as T

    e = ">" if big_endian else "<"
    fmt = {T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I", T.INT32: "i", T.FLOAT32: "f",
           T.UINT64: "Q", T.INT64: "q", T.FLOAT64: "d", T.BOOL: "?"}

    def value(t, v):
        if t == T.STRING:
            return struct.pack(e + "Q", len(v.encode())) + v.encode()
        if t == T.ARRAY:
            item, items = v
            return struct.pack(e + "IQ", item, len(items)) + b"".join(value(item, x) for x in items)
        return struct.pack(e + fmt[t], v)

    body = b"".join(value(T.STRING, k) + struct.pack(e + "I", t) + value(t, v) for k, t, v in fields)
    tensor = value(T.STRING, "w") + struct.pack(e + "IQIQ", 1, 4, 0, 0)  # 1 dim of 4, F32, at offset 0
    data = b"GGUF" + struct.pack(e + "IQQ", 3, 1, len(fields)) + body + tensor
    data += b"\0" * (-len(data) % 32) + np.arange(4, dtype=e + "f4").tobytes()
    path.write_bytes(data)


def _all_array_kinds():
    from gguf import GGUFValueType as T

    fields = [("s.u32", T.UINT32, 7), ("s.str", T.STRING, "h\u00e9")]
    for t, items in ((T.UINT8, [1, 2]), (T.INT8, [-1, 2]), (T.UINT16, [3]), (T.INT16, [-3, 4]), (T.UINT32, [5, 6]),
                     (T.INT32, [-5]), (T.FLOAT32, [1.5, -2.0]), (T.UINT64, [7, 8]), (T.INT64, [-7]),
                     (T.FLOAT64, [0.25]), (T.BOOL, [True, False])):
        fields += [(f"a.{t.name}", T.ARRAY, (t, items)), (f"e.{t.name}", T.ARRAY, (t, []))]
    return fields + [
        ("a.str", T.ARRAY, (T.STRING, ["", "ab", "\u0120the", "x" * 300])), ("e.str", T.ARRAY, (T.STRING, [])),
        ("e.unknown", T.ARRAY, (99, [])),  # an empty array of an item type gguf does not know: it reads no type
        ("a.nested", T.ARRAY, (T.ARRAY, [(T.INT32, [1, 2]), (T.INT32, []), (T.STRING, ["q", ""])])),
        ("z.after", T.UINT64, 123456789)]


def test_the_gguf_reader_within_parsed_once_reads_what_ggufs_reader_reads_from_plain_arrays(tmp_path):
    """gguf_parsed_once's reader slices a plain array over the file's memory map (a slice of an
    np.memmap runs Python code, once per vocabulary entry in a parse), reads every field and
    tensor as gguf's own reader does, little- or big-endian; a reader that is no class (a user's
    wrapper) is still called."""
    import gguf
    import numpy as np

    from distreach.models import gguf_parsed_once

    from .conftest import write_tiny_gguf

    write_tiny_gguf(tmp_path / "tiny.gguf")
    write_tiny_gguf(tmp_path / "big.gguf", big_endian=True)
    _write_gguf(tmp_path / "arrays.gguf", _all_array_kinds())
    _write_gguf(tmp_path / "arrays-big.gguf", _all_array_kinds(), big_endian=True)
    for name in ("arrays.gguf", "arrays-big.gguf", "tiny.gguf", "big.gguf"):
        ref = gguf.GGUFReader(tmp_path / name)
        with gguf_parsed_once():
            got = gguf.GGUFReader(tmp_path / name)
            assert gguf.GGUFReader(tmp_path / name) is got
        assert list(got.fields) == list(ref.fields)
        for key, field in ref.fields.items():
            mine = got.fields[key]
            assert (mine.data, mine.types, mine.offset) == (field.data, field.types, field.offset), key
            assert len(mine.parts) == len(field.parts) and all(
                a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b) for a, b in zip(mine.parts, field.parts)), key
            assert not any(isinstance(p, np.memmap) for p in mine.parts), key
        assert [(t.name, t.tensor_type, t.data_offset) for t in got.tensors] == [(t.name, t.tensor_type, t.data_offset) for t in ref.tensors]
        assert all(a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data) and not isinstance(a.data, np.memmap)
                   for a, b in zip(got.tensors, ref.tensors))
    assert ref.fields["llama.block_count"].parts[-1].dtype.byteorder == ">" and ref.fields["tokenizer.ggml.tokens"].contents()[-1] == "Ġthe"

    calls, parts = [], gguf.GGUFReader._get_field_parts

    def counted(self, *args):
        calls.append(args)
        return parts(self, *args)

    gguf.GGUFReader._get_field_parts = counted
    try:
        with gguf_parsed_once():
            tiny = gguf.GGUFReader(tmp_path / "tiny.gguf")
    finally:
        gguf.GGUFReader._get_field_parts = parts
    scalars = [f for k, f in tiny.fields.items() if not k.startswith("GGUF.") and f.types[0] != gguf.GGUFValueType.ARRAY]
    assert len(calls) == len(scalars)  # an array's entries (the vocabulary: 260) are read without a call each

    seen, original = [], gguf.GGUFReader

    def wrapper(path, mode="r"):  # a user's patch of gguf's reader: a function, not a class
        seen.append(path)
        return original(path, mode)

    gguf.GGUFReader = wrapper
    try:
        with gguf_parsed_once():
            assert type(gguf.GGUFReader(tmp_path / "big.gguf")) is original
            assert gguf.GGUFReader(tmp_path / "big.gguf").fields.keys() == ref.fields.keys()
        assert gguf.GGUFReader is wrapper and seen == [tmp_path / "big.gguf"]  # once: the block's reads are cached
    finally:
        gguf.GGUFReader = original


def test_a_model_in_bf16_on_the_cpu_attends_by_plain_matmuls(tiny_dirs):
    """torch's flash-attention kernel for the CPU is the slower one in bf16 at the engine's few
    positions (benchmarks/README.md): bf16 on a CPU loads eager attention, fp32 keeps SDPA."""
    for dtype, want in (("bf16", "eager"), ("fp32", "sdpa")):
        lm = load_materialised(tiny_dirs["llama"], dtype=dtype, device="cpu")[0]
        assert (lm.model.config._attn_implementation, lm.model.dtype) == (want, DTYPES[dtype])
    assert attention_for("cpu:0", DTYPES["bf16"]) == "eager" and attention_for("cuda", DTYPES["bf16"]) is None


@pytest.mark.parametrize("source", ["local", "gguf", "random_init"])
def test_the_vocabulary_table_written_with_the_model_is_that_of_its_tokenizer_loaded_again(source, tiny_dirs, tmp_path,
                                                                                           monkeypatch):
    """materialise writes the table from the tokenizer it has in hand, without loading the
    folder's; a tuning loads the folder's: the two give the same table (a GGUF's tokenizer is
    converted in memory; the embedded models' in tests/test_real_model.py)."""
    from distreach import models
    from distreach.io import read_arrow

    from .conftest import write_tiny_gguf

    base = None
    if source == "gguf":
        write_tiny_gguf(tmp_path / "tiny.gguf")
        spec = {"gguf_file": str(tmp_path / "tiny.gguf")}
    elif source == "random_init":
        spec, base = {"random_init": "tiny-llama", "seed": 3}, tiny_dirs["llama"]
    else:
        spec = {"local": str(save_tiny(tmp_path / "src"))}
    from transformers import AutoTokenizer

    loads = AutoTokenizer.from_pretrained

    def not_the_new_folder(folder, *args, **kw):  # the folder written, or its staging sibling .m.*
        name = Path(folder).name
        assert "gguf_file" in kw or not (name == "m" or name.startswith(".m.")), "materialise loaded the tokenizer it wrote"
        return loads(folder, *args, **kw)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", not_the_new_folder)
    manifest = materialise(ModelSpec.from_config("m", {"source": spec}), tmp_path / "m", base_dir=base,
                           vocab_out=tmp_path / "with-model.arrow")
    monkeypatch.undo()
    models.write_vocab(tmp_path / "m", tmp_path / "loaded-again.arrow")
    made, again = read_arrow(tmp_path / "with-model.arrow"), read_arrow(tmp_path / "loaded-again.arrow")
    assert made.num_rows == manifest["vocab_size"] and made.equals(again)


@pytest.mark.skipif(platform.system() != "Linux" or not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"),
                    reason="glibc's malloc only (mallinfo2: glibc 2.33 or later)")
@pytest.mark.parametrize("reuse", [False, True])
def test_reuse_freed_memory_keeps_large_tensors_in_the_heap(reuse):
    """After reuse_freed_memory a 100 MB tensor comes from malloc's heap, not a fresh mapping, and
    its memory stays there when it is freed, for later tensors; without it, it is a mapping of its
    own. In a child process: the setting is process-wide."""
    code = f"""
import ctypes, torch
from distreach.models import reuse_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks',
                                               'uordblks', 'fordblks', 'keepcost')]
info = ctypes.CDLL(None).mallinfo2
info.restype = Info
applied = reuse_freed_memory() if {reuse} else None
before = info()
x = torch.ones(25_000_000)  # 100 MB
mapped, heap = info().hblkhd - before.hblkhd, info().arena - before.arena
del x
kept = info().arena - before.arena
print(applied, mapped, heap, kept)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    applied, (mapped, heap, kept) = out[0], map(int, out[1:])
    if reuse:  # from the heap, and kept there when freed
        assert applied == "True" and mapped == 0 and heap > 90_000_000 and kept == heap
    else:
        assert mapped >= 100_000_000 and heap < 100_000_000


def test_reuse_freed_memory_does_nothing_on_a_gpu_or_off_glibc(monkeypatch):
    import os

    from distreach import models

    def no_glibc(name):
        raise ValueError(name)  # os.confstr on a C library without glibc's names (musl)

    assert models.reuse_freed_memory("cuda") is False  # on a GPU the step's tensors are not malloc's
    monkeypatch.setattr(os, "confstr", no_glibc)
    assert models.reuse_freed_memory() is False
    monkeypatch.setattr(models.platform, "system", lambda: "Darwin")
    assert models.reuse_freed_memory() is False


@pytest.mark.parametrize("half,name", [(torch.bfloat16, "bf16"), (torch.float16, "fp16")])
def test_a_half_precision_checkpoint_is_stored_as_it_is_and_loads_back_to_its_numbers(tmp_path, half, name):
    """A checkpoint whose weights are bf16 (fp16) is materialised in bf16 (fp16), not twice its size
    in fp32, and loads back to its weights exactly, in fp32 and in its own dtype."""
    from safetensors import safe_open

    from .conftest import tiny_model

    model, tok = tiny_model("llama", 0)
    model.to(half).save_pretrained(tmp_path / "src", safe_serialization=True)
    tok.save_pretrained(tmp_path / "src")
    m = materialise(ModelSpec.from_config("half", {"source": {"local": str(tmp_path / "src")}}), tmp_path / "half")
    (weights,) = (tmp_path / "half").glob("*.safetensors")
    with safe_open(weights, "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {half}
    assert m["weights_dtype"] == str(half).removeprefix("torch.") == read_manifest(tmp_path / "half")["weights_dtype"]
    source = model.state_dict()
    for dtype, as_torch in (("fp32", torch.float32), (name, half)):
        lm = load_materialised(tmp_path / "half", dtype=dtype, device="cpu")[0]
        for key, value in lm.model.state_dict().items():
            assert value.dtype == as_torch and torch.equal(value, source[key].to(as_torch)), (dtype, key)


def test_weights_bf16_would_round_are_stored_in_fp32(tiny_dirs):
    assert read_manifest(tiny_dirs["llama"])["weights_dtype"] == "float32"


def test_a_row_tuned_on_fp32_stored_weights_finds_them_again_from_a_bf16_source(tmp_path, capsys, monkeypatch):
    """A row whose model was stored in fp32 when it was tuned (weights_sha256 of the fp32 files), its
    source a bf16 checkpoint: generate finds its weights again beside a cache entry stored in bf16
    (converting the source to fp32 files in a folder of their own), with a full cache and an empty
    one, and the bf16 entry and rows tuned on it stay as they are."""
    import shutil

    import distreach.models
    from distreach import cli

    from .conftest import tiny_cli_home, tiny_model

    model, tok = tiny_model("llama", 0)
    src = tmp_path / "src"
    model.to(torch.bfloat16).save_pretrained(src, safe_serialization=True)
    tok.save_pretrained(src)
    (tmp_path / "t.json").write_text(json.dumps({"table": 0.5, "river": 0.5}))
    tune = ["tune", "--model", str(src), "--target", str(tmp_path / "t.json"), "--inits", "1", "--max-steps", "2", "-q"]
    models = tmp_path / "cache" / "models"
    with tiny_cli_home(tmp_path):
        with monkeypatch.context() as m:  # the row tuned as when every model was stored in fp32
            m.setattr(distreach.models, "exact_dtype", lambda model: torch.float32)
            assert cli.main([*tune, "--out", str(tmp_path / "old.arrow")]) == 0
        shutil.rmtree(models)
        assert cli.main([*tune, "--out", str(tmp_path / "new.arrow")]) == 0  # the cache now in bf16
        (entry,) = models.iterdir()
        assert read_manifest(entry)["weights_dtype"] == "bfloat16"
        for emptied in (False, True):
            if emptied:
                shutil.rmtree(models)
            for rows in ("old", "new"):
                capsys.readouterr()
                code = cli.main(["generate", str(tmp_path / f"{rows}.arrow"), "--target", "t", "--samples", "0"])
                assert code == 0, (emptied, rows, capsys.readouterr().err)
            assert sorted(p.name for p in models.iterdir()) == [entry.name, entry.name + "-float32"]
            assert read_manifest(entry)["weights_dtype"] == "bfloat16"
            assert read_manifest(models / (entry.name + "-float32"))["weights_dtype"] == "float32"
