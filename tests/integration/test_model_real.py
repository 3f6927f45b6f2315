"""The real default model: SmolLM2-135M-Instruct converted from its Q4_1 GGUF to CTranslate2 INT8.

Uses the session-scoped ``real_model_dir`` fixture (tests/conftest.py), which builds the model
once per session into a temporary directory (or ``$TOKENBOOTH_TEST_MODELS_DIR``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ctranslate2
import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from service.models import (
    DEFAULT_MODEL_NAME,
    build_model,
    default_gguf_path,
    load_model_files,
    render_chat,
)
from service.models import build as build_module
from service.models import gguf as gguf_reader
from service.models.model_bin import scan_model_bin
from service.models.storage import sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def greedy_answer(model_dir: Path, question: str, max_length: int = 32) -> str:
    files = load_model_files(model_dir)
    prompt = render_chat(
        files.chat_template,
        [{"role": "user", "content": question}],
        bos_token=files.manifest.bos_token,
        eos_token=files.manifest.eos_tokens[0],
    )
    tokens = files.tokenizer.encode(prompt, add_special_tokens=False).tokens
    generator = ctranslate2.Generator(str(model_dir), device="cpu", compute_type="int8")
    result = generator.generate_batch(
        [tokens],
        max_length=max_length,
        sampling_topk=1,
        include_prompt_in_result=False,
        end_token=files.manifest.eos_tokens,
    )
    answer: str = files.tokenizer.decode(result[0].sequences_ids[0])
    return answer


def test_greedy_answer_knows_the_capital_of_france(real_model_dir: Path) -> None:
    answer = greedy_answer(real_model_dir, "What is the capital of France?")
    assert "Paris" in answer, answer


def test_manifest_describes_smollm2_135m(real_model_dir: Path) -> None:
    manifest = load_model_files(real_model_dir).manifest
    assert manifest.name == DEFAULT_MODEL_NAME
    assert manifest.quantization == "int8"
    assert manifest.architecture == "llama"
    assert 120_000_000 < manifest.parameter_count < 150_000_000
    assert manifest.context_length == 8192
    assert manifest.vocab_size == 49152
    assert manifest.bos_token == "<|im_start|>"
    assert manifest.eos_tokens == ["<|im_end|>"]
    assert manifest.source_sha256 == sha256_file(default_gguf_path())
    # model.bin holds the same number of distinct weights (the tied head is an alias).
    summary = scan_model_bin(real_model_dir / "model.bin")
    assert summary is not None
    assert summary.parameter_count == manifest.parameter_count
    assert summary.quantization == "int8"


def test_rebuilding_the_cached_default_model_is_a_no_op(
    real_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_convert(*args: Any) -> None:
        raise AssertionError("the cached model was rebuilt")

    monkeypatch.setattr(build_module, "convert_gguf", must_not_convert)
    again = build_model(None, quantization="int8", models_dir=real_model_dir.parent)
    assert again == real_model_dir


def test_gguf_parser_agrees_with_gguf_reader_on_the_real_file() -> None:
    path = default_gguf_path()
    ours = gguf_reader.parse_gguf(path)
    reader = gguf.GGUFReader(path)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == theirs
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    data = np.memmap(path, dtype=np.uint8, mode="r")
    by_type: dict[str, Any] = {}
    for tensor in reader.tensors:
        by_type.setdefault(tensor.tensor_type.name, tensor)
    assert set(by_type) == {"F32", "Q4_1", "Q8_0"}
    for tensor in by_type.values():
        mine = ours.tensors[tensor.name]
        assert mine.offset == tensor.data_offset
        expected = dequantize(tensor.data, tensor.tensor_type)
        actual = gguf_reader.dequantize_tensor(data, mine)
        assert np.array_equal(actual, expected.reshape(actual.shape))
