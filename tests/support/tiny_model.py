"""A random-weight Llama with SmolLM2's real tokenizer: a real model directory in a second.

Tests that need a servable model directory (files, manifest, tokenizer, chat template) but
not sensible generations build this instead of converting the 135M default model.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from pathlib import Path
from typing import Final

import numpy as np

from service.models.convert import LlamaShape, LlamaSpec, llama_spec, save_spec
from service.models.gguf import Float32Array, open_gguf
from service.models.manifest import new_manifest, write_manifest
from service.models.paths import default_gguf_path
from service.models.storage import (
    build_lock,
    check_replaceable,
    publish,
    sha256_file,
    staging_dir,
)
from service.models.tokenizer import Vocab, vocab_from_gguf, write_tokenizer_files

__all__ = ["TINY_MODEL_NAME", "build_tiny_model", "tiny_llama_spec"]

logger = logging.getLogger(__name__)

TINY_MODEL_NAME: Final = "tiny-random"


@functools.lru_cache(maxsize=8)
def _cached_gguf_vocab(path: str, size: int, mtime_ns: int) -> Vocab:
    del size, mtime_ns  # cache keys only: a changed file gets a new entry
    return vocab_from_gguf(open_gguf(Path(path)).metadata)


def _gguf_vocab(path: Path) -> Vocab:
    """The GGUF's vocabulary, rebuilt once per file version (tests build many tiny models)."""
    stat = path.stat()
    return _cached_gguf_vocab(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _weight_shapes(shape: LlamaShape) -> dict[str, tuple[int, ...]]:
    """Every tensor a Llama of this shape has, by GGUF name (no output.weight: tied)."""
    hidden = shape.hidden_size
    kv_dim = shape.num_heads_kv * shape.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (shape.vocab_size, hidden),
        "output_norm.weight": (hidden,),
    }
    for index in range(shape.num_layers):
        prefix = f"blk.{index}."
        shapes |= {
            prefix + "attn_norm.weight": (hidden,),
            prefix + "attn_q.weight": (hidden, hidden),
            prefix + "attn_k.weight": (kv_dim, hidden),
            prefix + "attn_v.weight": (kv_dim, hidden),
            prefix + "attn_output.weight": (hidden, hidden),
            prefix + "ffn_norm.weight": (hidden,),
            prefix + "ffn_gate.weight": (shape.intermediate_size, hidden),
            prefix + "ffn_up.weight": (shape.intermediate_size, hidden),
            prefix + "ffn_down.weight": (hidden, shape.intermediate_size),
        }
    return shapes


def tiny_llama_spec(
    *,
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_heads_kv: int = 2,
    context_length: int = 512,
) -> tuple[LlamaSpec, Vocab, LlamaShape]:
    """The CTranslate2 spec of a seeded random-weight Llama with SmolLM2's vocabulary.

    Raises:
        ModelBuildError: Inconsistent dimensions or the default GGUF is missing.
    """
    vocab = _gguf_vocab(default_gguf_path())
    shape = LlamaShape(
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
    shapes = _weight_shapes(shape)

    def weight(name: str) -> Float32Array:
        dims = shapes[name]  # KeyError for output.weight: embeddings are tied
        noise = rng.standard_normal(dims, dtype=np.float32) * np.float32(0.02)
        # Norm gammas near 1 (all-ones would be deduplicated into aliases by CTranslate2).
        return (noise + np.float32(1.0)) if len(dims) == 1 else noise

    return llama_spec(shape, weight, vocab), vocab, shape


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
    built, vocab, shape = tiny_llama_spec(
        seed=seed,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_heads_kv=num_heads_kv,
        context_length=context_length,
    )
    source_sha256 = hashlib.sha256(f"{sha256_file(source)}:{seed}:{shape}".encode()).hexdigest()
    _publish_tiny(output, built, vocab, source, source_sha256, context_length)
    logger.info("built tiny random model in %s in %.2fs", output, time.perf_counter() - started)
    return output


def _publish_tiny(
    output: Path,
    built: LlamaSpec,
    vocab: Vocab,
    source: Path,
    source_sha256: str,
    context_length: int,
) -> None:
    """Save the spec, tokenizer and manifest in staging and publish them, as real builds do."""
    quantization = "float32"
    with build_lock(output):
        check_replaceable(output, force=False)
        with staging_dir(output) as staging:
            save_spec(built.spec, staging, quantization)
            write_tokenizer_files(vocab, staging)
            manifest = new_manifest(
                staging,
                name=TINY_MODEL_NAME,
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
            write_manifest(staging, manifest)
            publish(staging, output)
