"""Building blocks of the service.models tests: a tiny llama.cpp-style GGUF and model probes.

The GGUF is written on the fly with SmolLM2's real tokenizer, so conversions take seconds;
the real 135M conversion is in tests/integration/test_model_real.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import ctranslate2
import gguf
import numpy as np
from gguf.quants import dequantize, quantize

from service.models import CHAT_TEMPLATE_FILENAME, MANIFEST_FILENAME, load_model_files

__all__ = [
    "FFN",
    "HEADS",
    "HEADS_KV",
    "HEAD_DIM",
    "HIDDEN",
    "LAYERS",
    "copy_without_manifest",
    "generate",
    "hf_weights",
    "llama_cpp_permute",
    "vocabulary",
    "write_tiny_gguf",
]

HIDDEN, HEADS, HEADS_KV, FFN, LAYERS = 64, 4, 2, 128, 2
HEAD_DIM = HIDDEN // HEADS


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's Q/K permutation (HF half-split -> interleaved pairs)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def hf_weights(seed: int, vocab_size: int) -> dict[str, np.ndarray]:
    """Random Llama weights in the Hugging Face layout, keyed by GGUF tensor name."""
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    weights = {
        # Q8_0-quantized below; keep the values it will dequantize to.
        "token_embd.weight": rand(vocab_size, HIDDEN),
        "output_norm.weight": 1 + rand(HIDDEN),
    }
    kv = HEADS_KV * HEAD_DIM
    for i in range(LAYERS):
        p = f"blk.{i}."
        weights |= {
            p + "attn_norm.weight": 1 + rand(HIDDEN),
            p + "attn_q.weight": rand(HIDDEN, HIDDEN),
            p + "attn_k.weight": rand(kv, HIDDEN),
            p + "attn_v.weight": rand(kv, HIDDEN),
            p + "attn_output.weight": rand(HIDDEN, HIDDEN),
            p + "ffn_norm.weight": 1 + rand(HIDDEN),
            p + "ffn_gate.weight": rand(FFN, HIDDEN),
            p + "ffn_up.weight": rand(FFN, HIDDEN),
            p + "ffn_down.weight": rand(HIDDEN, FFN),
        }
    embd_q = quantize(weights["token_embd.weight"], gguf.GGMLQuantizationType.Q8_0)
    weights["token_embd.weight"] = dequantize(embd_q, gguf.GGMLQuantizationType.Q8_0)
    return weights


def write_tiny_gguf(path: Path, metadata: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """Write a 2-layer Llama GGUF the way llama.cpp does (Q/K permuted, Q8_0 embeddings)."""
    tokens = metadata["tokenizer.ggml.tokens"]
    weights = hf_weights(seed, len(tokens))
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS_KV)
    writer.add_rope_freq_base(10_000.0)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(metadata["tokenizer.ggml.pre"])
    writer.add_token_list(tokens)
    writer.add_token_types(metadata["tokenizer.ggml.token_type"])
    writer.add_token_merges(metadata["tokenizer.ggml.merges"])
    writer.add_bos_token_id(metadata["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(metadata["tokenizer.ggml.eos_token_id"])
    writer.add_unk_token_id(metadata["tokenizer.ggml.unknown_token_id"])
    writer.add_chat_template(metadata["tokenizer.chat_template"])
    for name, value in weights.items():
        if name == "token_embd.weight":
            q = quantize(value, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif name.endswith(".attn_q.weight"):
            writer.add_tensor(name, llama_cpp_permute(value, HEADS))
        elif name.endswith(".attn_k.weight"):
            writer.add_tensor(name, llama_cpp_permute(value, HEADS_KV))
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


def generate(model_dir: Path, text: str, max_length: int = 4) -> list[str]:
    """Greedy tokens CTranslate2 generates from ``text`` with the directory's own tokenizer."""
    files = load_model_files(model_dir)
    generator = ctranslate2.Generator(str(model_dir), device="cpu", compute_type="int8")
    tokens = files.tokenizer.encode(text, add_special_tokens=False).tokens
    result = generator.generate_batch(
        [tokens], max_length=max_length, sampling_topk=1, include_prompt_in_result=False
    )
    sequence: list[str] = result[0].sequences[0]
    return sequence


def vocabulary(model_dir: Path) -> list[str]:
    """The CTranslate2 vocabulary of a model directory."""
    tokens: list[str] = json.loads((model_dir / "vocabulary.json").read_text(encoding="utf-8"))
    return tokens


def copy_without_manifest(tiny_dir: Path, destination: Path) -> Path:
    """A copy of a built model as a foreign CTranslate2 directory (no manifest or template)."""
    shutil.copytree(tiny_dir, destination)
    (destination / MANIFEST_FILENAME).unlink()
    (destination / CHAT_TEMPLATE_FILENAME).unlink()
    return destination
