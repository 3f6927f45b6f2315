"""Convert a Llama GGUF to CTranslate2, without torch.

The GGUF header gives the hyper-parameters and tensor locations, ``gguf.quants`` dequantizes
the weights, llama.cpp's Q/K rotary permutation is undone, and a CTranslate2
``TransformerDecoderModelSpec`` is filled the way CTranslate2's own Llama loader fills it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.errors import ModelBuildError
from service.models.gguf import Float32Array, dequantize_tensor, open_gguf, unpermute_rotary
from service.models.int8 import WEIGHT_CODE_MAX, requantize_int8_weights
from service.models.tokenizer import Vocab, vocab_from_gguf, write_tokenizer_files

__all__ = [
    "Converted",
    "LlamaShape",
    "LlamaSpec",
    "WeightSource",
    "convert_gguf",
    "gguf_shape",
    "llama_spec",
    "save_spec",
]

logger = logging.getLogger(__name__)

# Fetches one weight by its GGUF name, as float32 in the Hugging Face layout [out, in].
WeightSource = Callable[[str], Float32Array]
# Fetches one weight by name, checking its shape and counting its parameters.
_Take = Callable[[str, tuple[int, ...]], Float32Array]


@dataclass(frozen=True)
class LlamaShape:
    """The hyper-parameters of a Llama decoder."""

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
        """Size of one attention head."""
        return self.hidden_size // self.num_heads

    def check(self) -> None:
        """Reject shapes CTranslate2 cannot build.

        Raises:
            ModelBuildError: No layers or heads, odd or uneven heads, or query heads that
                do not group over the key/value heads.
        """
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


@dataclass(frozen=True)
class LlamaSpec:
    """A filled CTranslate2 spec and its distinct weight count."""

    spec: Any  # ctranslate2.specs.TransformerDecoderModelSpec
    parameter_count: int  # distinct weights: a tied output head counts once


def llama_spec(shape: LlamaShape, weight: WeightSource, vocab: Vocab) -> LlamaSpec:
    """Fill a CTranslate2 decoder spec exactly like ``ctranslate2``'s ``LlamaLoader`` does.

    Raises:
        ModelBuildError: The shape is invalid or a weight has the wrong shape.
        KeyError: ``weight`` lacks a tensor (only ``output.weight`` may be missing).
    """
    shape.check()
    hidden = shape.hidden_size
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

    spec = _decoder_spec(shape)
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
        _fill_layer(layer, f"blk.{index}.", shape, take)

    spec.register_vocabulary(list(vocab.tokens))
    spec.config.bos_token = vocab.bos_token
    spec.config.eos_token = vocab.eos_tokens[0]
    spec.config.unk_token = vocab.unk_token
    spec.config.layer_norm_epsilon = shape.rms_norm_eps
    return LlamaSpec(spec=spec, parameter_count=parameter_count)


def _decoder_spec(shape: LlamaShape) -> Any:
    """An empty pre-norm, RMS-norm, SwiGLU, rotary decoder spec of this shape."""
    from ctranslate2.specs import common_spec, transformer_spec

    return transformer_spec.TransformerDecoderModelSpec.from_config(
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


def _fill_layer(layer: Any, prefix: str, shape: LlamaShape, take: _Take) -> None:
    """Set one decoder layer's attention and feed-forward weights (fused QKV, as CT2 wants)."""
    hidden, ffn = shape.hidden_size, shape.intermediate_size
    kv_dim = shape.num_heads_kv * shape.head_dim
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
    layer.ffn.layer_norm.gamma = take(prefix + "ffn_norm.weight", (hidden,))
    layer.ffn.linear_0.weight = take(prefix + "ffn_gate.weight", (ffn, hidden))
    layer.ffn.linear_0_noact.weight = take(prefix + "ffn_up.weight", (ffn, hidden))
    layer.ffn.linear_1.weight = take(prefix + "ffn_down.weight", (hidden, ffn))


def save_spec(
    spec: Any, output_dir: Path, quantization: str, *, int8_code_max: int = WEIGHT_CODE_MAX
) -> None:
    """Validate, quantize and save a spec, as ``ctranslate2.converters.Converter`` does.

    INT8 weights get codes bounded by ``int8_code_max``; the default is one no x86 int8 GEMM
    saturates (:mod:`service.models.int8`), 127 is CTranslate2's own converter's.

    Raises:
        ModelBuildError: CTranslate2 rejects the spec.
    """
    started = time.perf_counter()
    try:
        spec.validate()
        requantize_int8_weights(spec, quantization, int8_code_max)
        spec.save(str(output_dir))
    except ValueError as exc:
        raise ModelBuildError(f"CTranslate2 rejected the converted model: {exc}") from exc
    logger.info(
        "saved CTranslate2 model (%s) to %s in %.2fs",
        quantization,
        output_dir,
        time.perf_counter() - started,
    )


def _shortest_float32(value: float) -> float:
    """GGUF stores float32: 1e-5 reads back as 9.99999974e-06; keep the decimal it came from."""
    return float(str(np.float32(value)))


def gguf_shape(metadata: Mapping[str, Any], vocab: Vocab) -> LlamaShape:
    """Read the Llama hyper-parameters from GGUF metadata, rejecting what CT2 cannot run.

    Raises:
        ModelBuildError: Not a Llama, a missing hyper-parameter, rope scaling, partial
            rotary embeddings, or head sizes and vocabulary that do not add up.
    """
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
    shape = LlamaShape(
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
class Converted:
    """What a GGUF conversion found: the model's shape, vocabulary and weight count."""

    shape: LlamaShape
    vocab: Vocab
    parameter_count: int


def convert_gguf(
    source: Path, output_dir: Path, quantization: str, *, int8_code_max: int = WEIGHT_CODE_MAX
) -> Converted:
    """Write a CTranslate2 model and its tokenizer files converted from a Llama GGUF.

    ``int8_code_max`` bounds int8 weight codes, as in :func:`save_spec`.

    Raises:
        ModelBuildError: The GGUF cannot be read, is not a supported Llama, lacks a
            tensor or has tensors this converter does not understand.
    """
    gguf_file = open_gguf(source)
    vocab = vocab_from_gguf(gguf_file.metadata)
    shape = gguf_shape(gguf_file.metadata, vocab)
    remaining = dict(gguf_file.tensors)
    data: npt.NDArray[np.uint8] = np.memmap(source, dtype=np.uint8, mode="r")

    def weight(name: str) -> Float32Array:
        tensor = remaining.pop(name)  # KeyError: missing (only output.weight may be)
        value = dequantize_tensor(data, tensor)
        if name.endswith(".attn_q.weight"):
            value = unpermute_rotary(value, shape.num_heads)
        elif name.endswith(".attn_k.weight"):
            value = unpermute_rotary(value, shape.num_heads_kv)
        return value

    started = time.perf_counter()
    try:
        built = llama_spec(shape, weight, vocab)
    except KeyError as exc:
        raise ModelBuildError(f"GGUF file {source} lacks tensor {exc.args[0]}") from None
    if remaining:
        raise ModelBuildError(
            f"GGUF file {source} has tensors this converter does not understand: "
            + ", ".join(sorted(remaining)[:8])
        )
    logger.info("dequantized %s in %.2fs", source.name, time.perf_counter() - started)
    save_spec(built.spec, output_dir, quantization, int8_code_max=int8_code_max)
    write_tokenizer_files(vocab, output_dir)
    return Converted(shape=shape, vocab=vocab, parameter_count=built.parameter_count)
