"""The tiny random model (tests.support.tiny_model): a real model directory, seeded weights."""

from __future__ import annotations

from pathlib import Path

import ctranslate2
import pytest

from service.errors import ModelBuildError
from service.models import (
    CHAT_TEMPLATE_FILENAME,
    MANIFEST_FILENAME,
    MANIFEST_FORMAT_VERSION,
    TOKENIZER_FILENAME,
    ModelManifest,
    read_manifest,
)
from tests.support.tiny_model import build_tiny_model
from tests.unit.service.models.helpers import (
    HEAD_DIM,
    HEADS_KV,
    HIDDEN,
    LAYERS,
    generate,
    vocabulary,
)


def test_tiny_model_loads_and_generates(tiny_dir: Path) -> None:
    generated = generate(tiny_dir, "Hello there, how are you?", max_length=5)
    assert len(generated) == 5
    assert set(generated) <= set(vocabulary(tiny_dir))


def test_tiny_model_has_every_file_and_an_exact_manifest(tiny_dir: Path) -> None:
    names = {p.name for p in tiny_dir.iterdir()}
    assert {
        "model.bin",
        "config.json",
        "vocabulary.json",
        TOKENIZER_FILENAME,
        CHAT_TEMPLATE_FILENAME,
        MANIFEST_FILENAME,
    } <= names
    manifest = read_manifest(tiny_dir)
    vocab = 49152
    kv_dim = HEADS_KV * HEAD_DIM
    # norms + q/o + k/v + gate/up/down (build_tiny_model uses a 4x FFN)
    per_layer = 2 * HIDDEN + 2 * HIDDEN * HIDDEN + 2 * kv_dim * HIDDEN + 3 * 4 * HIDDEN * HIDDEN
    assert manifest.name == "tiny-random"
    assert manifest.architecture == "llama"
    assert manifest.vocab_size == vocab
    assert manifest.context_length == 512
    assert manifest.bos_token == "<|im_start|>"
    assert manifest.eos_tokens == ["<|im_end|>"]
    assert manifest.ctranslate2_version == ctranslate2.__version__
    assert manifest.format_version == MANIFEST_FORMAT_VERSION
    # Tied embeddings count once; the head is an alias in model.bin.
    assert manifest.parameter_count == vocab * HIDDEN + HIDDEN + LAYERS * per_layer
    assert manifest.revision == ModelManifest.compute_revision(
        manifest.source_sha256, manifest.quantization
    )
    assert "+00:00" in manifest.built_at


def test_tiny_model_is_seeded(tmp_path: Path, tiny_dir: Path) -> None:
    same = build_tiny_model(tmp_path / "same")
    other = build_tiny_model(tmp_path / "other", seed=1)
    model_bin = (tiny_dir / "model.bin").read_bytes()
    assert (same / "model.bin").read_bytes() == model_bin
    assert (other / "model.bin").read_bytes() != model_bin
    assert read_manifest(other).revision != read_manifest(tiny_dir).revision


def test_tiny_model_rejects_bad_dimensions(tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError, match="key/value heads"):
        build_tiny_model(tmp_path / "m", num_heads=4, num_heads_kv=3)
    with pytest.raises(ModelBuildError, match="heads"):
        build_tiny_model(tmp_path / "m", hidden_size=30, num_heads=4)
    assert not (tmp_path / "m").exists()
