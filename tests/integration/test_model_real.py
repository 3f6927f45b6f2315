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
from service.models.eval import evaluate
from service.models.int8 import WEIGHT_CODE_MAX
from service.models.model_bin import scan_model_bin
from service.models.storage import sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MAX_INT8_PERPLEXITY_INCREASE = 0.10
"""Int8 may cost this much held-out perplexity over float32 (saturated sums cost 0.157)."""
MAX_INT8_TASK_LOSS = 0.1
"""And this share of the known-answer tasks (4 of 42)."""


def greedy_answer(
    model_dir: Path, question: str, max_length: int = 32, compute_type: str = "default"
) -> str:
    files = load_model_files(model_dir)
    prompt = render_chat(
        files.chat_template,
        [{"role": "user", "content": question}],
        bos_token=files.manifest.bos_token,
        eos_token=files.manifest.eos_tokens[0],
    )
    tokens = files.tokenizer.encode(prompt, add_special_tokens=False).tokens
    generator = ctranslate2.Generator(str(model_dir), device="cpu", compute_type=compute_type)
    result = generator.generate_batch(
        [tokens],
        max_length=max_length,
        sampling_topk=1,
        include_prompt_in_result=False,
        end_token=files.manifest.eos_tokens,
    )
    answer: str = files.tokenizer.decode(result[0].sequences_ids[0])
    return answer


def test_float32_build_knows_the_capital_of_france(real_float32_dir: Path) -> None:
    """The conversion itself (tensor mapping, rotary un-permutation, template), free of int8 noise.

    One greedy answer is too close a call to pin on an int8 build: with full-range codes MKL
    answered "L'Étoile, la Cité, ..." where oneDNN said "Paris", and with 64-codes both
    answered in French; the int8 build is held to float32 on the whole eval sample below.
    """
    answer = greedy_answer(real_float32_dir, "What is the capital of France?")
    assert "Paris" in answer, answer


def test_int8_build_keeps_the_float32_quality(real_model_dir: Path, real_float32_dir: Path) -> None:
    """The int8 build against float32 on the shipped eval sample (``tokenbooth model eval``).

    On one AMD EPYC (AVX2, oneDNN) 64-codes cost +5.9 % perplexity and answered 30 of 42
    tasks to float32's 27; CTranslate2's own 127-codes saturated oneDNN's int16 sums: +15.7 %
    and 26 of 42; on MKL (Intel) ±127 passes these bounds (+3.1 %), so there only the manifest
    check below would catch a return to them. Greedy agreement is not asserted, so it is
    measured on one token only.
    """
    assert real_model_dir.parent == real_float32_dir.parent  # one cache: evaluate reuses both
    report = evaluate(
        None, ["int8"], device="cpu", agreement_tokens=1, models_dir=real_model_dir.parent
    )
    reference, int8 = report.variants
    assert (reference.quantization, int8.quantization) == ("float32", "int8")
    assert int8.perplexity_increase < MAX_INT8_PERPLEXITY_INCREASE, int8
    assert int8.task_accuracy >= reference.task_accuracy - MAX_INT8_TASK_LOSS, int8
    assert load_model_files(real_model_dir).manifest.int8_code_max == WEIGHT_CODE_MAX


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
    def must_not_convert(*args: Any, **options: Any) -> None:
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
