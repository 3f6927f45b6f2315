"""service.models.storage: staging, atomic publication and refusing to overwrite foreign dirs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.errors import ModelBuildError
from service.models import build_model, read_manifest
from service.models import convert as convert_module


def test_failed_build_leaves_no_half_model(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(spec: Any, output_dir: Path, quantization: str, **options: Any) -> None:
        (output_dir / "model.bin").write_bytes(b"half a model")
        raise KeyboardInterrupt  # as if the build were interrupted

    monkeypatch.setattr(convert_module, "save_spec", explode)
    with pytest.raises(KeyboardInterrupt):
        build_model(tiny_gguf, models_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".tiny-llama-int8.lock"]


def test_stale_staging_dirs_are_swept(tmp_path: Path, tiny_gguf: Path) -> None:
    stale = tmp_path / ".tiny-llama-int8.tmp-killed"
    stale.mkdir()
    (stale / "model.bin").write_bytes(b"partial")
    build_model(tiny_gguf, models_dir=tmp_path)
    assert not stale.exists()


def test_explicit_output_refuses_foreign_directory(tmp_path: Path, tiny_gguf: Path) -> None:
    output = tmp_path / "precious"
    output.mkdir()
    (output / "thesis.tex").write_text("do not delete")
    with pytest.raises(ModelBuildError, match="force"):
        build_model(tiny_gguf, output=output)
    assert (output / "thesis.tex").exists()
    assert build_model(tiny_gguf, output=output, force=True) == output
    assert not (output / "thesis.tex").exists()
    assert read_manifest(output).name == "tiny-llama"
