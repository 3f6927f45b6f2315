"""service.models.convert: a converted GGUF equals the spec filled from Hugging Face weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from service.errors import ModelBuildError
from service.models import build_model
from service.models.convert import LlamaShape, llama_spec, save_spec
from service.models.tokenizer import vocab_from_gguf
from tests.unit.service.models.helpers import FFN, HEADS, HEADS_KV, HIDDEN, LAYERS, write_tiny_gguf


def test_gguf_conversion_undoes_llama_cpp_qk_permutation(
    tmp_path: Path, real_metadata: dict[str, Any]
) -> None:
    """A converted GGUF equals the model built straight from the Hugging Face layout weights."""
    source = tmp_path / "src.gguf"
    weights = write_tiny_gguf(source, real_metadata, seed=7)
    built = build_model(source, quantization="float32", output=tmp_path / "from-gguf")

    vocab = vocab_from_gguf(real_metadata)
    shape = LlamaShape(
        num_layers=LAYERS,
        hidden_size=HIDDEN,
        num_heads=HEADS,
        num_heads_kv=HEADS_KV,
        intermediate_size=FFN,
        vocab_size=len(vocab.tokens),
        context_length=256,
        rope_base=10_000.0,
        rms_norm_eps=1e-5,
    )
    reference = tmp_path / "reference"
    reference.mkdir()
    save_spec(llama_spec(shape, weights.__getitem__, vocab).spec, reference, "float32")
    assert (built / "model.bin").read_bytes() == (reference / "model.bin").read_bytes()
    assert (built / "config.json").read_text() == (reference / "config.json").read_text()
    config = json.loads((built / "config.json").read_text())
    assert config["bos_token"] == "<|im_start|>"
    assert config["eos_token"] == "<|im_end|>"
    assert config["layer_norm_epsilon"] == pytest.approx(1e-5)


def test_non_llama_gguf_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "gpt.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelBuildError, match=r"byte-level BPE|architecture"):
        build_model(path, models_dir=tmp_path / "models")
