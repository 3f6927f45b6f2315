"""Fixtures of the service.models tests: a tiny random model and a tiny GGUF, built once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.models import gguf as gguf_reader
from service.models import paths
from tests.support.tiny_model import build_tiny_model
from tests.unit.service.models.helpers import write_tiny_gguf


@pytest.fixture(scope="package")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny random model shared by the read-only tests of this package."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="package")
def real_metadata() -> dict[str, Any]:
    """Metadata of the shipped SmolLM2 GGUF (tokenizer, chat template, hyper-parameters)."""
    return gguf_reader.parse_gguf(paths.default_gguf_path()).metadata


@pytest.fixture(scope="package")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory, real_metadata: dict[str, Any]) -> Path:
    """A tiny llama.cpp-style GGUF with SmolLM2's tokenizer."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_tiny_gguf(path, real_metadata)
    return path
