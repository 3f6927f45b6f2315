"""service.models.build: cache directory names, rebuild rules, source checks, resolve_model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.errors import ModelBuildError
from service.models import (
    DEFAULT_MODEL_NAME,
    build_model,
    read_manifest,
    resolve_model,
)
from service.models import build as build_module
from service.models.int8 import WEIGHT_CODE_MAX
from service.models.manifest import ModelManifest
from service.models.model_bin import scan_model_bin
from service.models.storage import sha256_file
from service.settings import QUANTIZATIONS
from tests.unit.service.models.helpers import generate, write_tiny_gguf


def test_gguf_manifest_and_cache_dir_name(tmp_path: Path, tiny_gguf: Path) -> None:
    built = build_model(tiny_gguf, models_dir=tmp_path)
    assert built == tmp_path / "tiny-llama-int8"
    manifest = read_manifest(built)
    assert manifest.name == "tiny-llama"
    assert manifest.quantization == "int8"
    assert manifest.context_length == 256
    assert manifest.source == str(tiny_gguf)
    assert manifest.source_sha256 == sha256_file(tiny_gguf)
    assert len(generate(built, "Hi")) == 4
    # Nothing but the model and its lock file is left next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".tiny-llama-int8.lock",
        "tiny-llama-int8",
    ]


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_every_quantization_builds_and_loads(
    tmp_path: Path, tiny_gguf: Path, quantization: str
) -> None:
    built = build_model(tiny_gguf, quantization=quantization, models_dir=tmp_path)
    assert built.name == f"tiny-llama-{quantization}"
    assert read_manifest(built).quantization == quantization
    assert len(generate(built, "Hi", max_length=2)) == 2


@pytest.fixture
def count_conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every GGUF conversion build_model performs."""
    calls: list[Path] = []
    real = build_module.convert_gguf

    def spy(source: Path, output_dir: Path, quantization: str, **options: Any) -> Any:
        calls.append(source)
        return real(source, output_dir, quantization, **options)

    monkeypatch.setattr(build_module, "convert_gguf", spy)
    return calls


def test_cached_build_is_a_no_op(
    tmp_path: Path, tiny_gguf: Path, count_conversions: list[Path]
) -> None:
    first = build_model(tiny_gguf, models_dir=tmp_path)
    mtime = (first / "model.bin").stat().st_mtime_ns
    second = build_model(tiny_gguf, models_dir=tmp_path)
    assert second == first
    assert count_conversions == [tiny_gguf]
    assert (first / "model.bin").stat().st_mtime_ns == mtime


def test_force_rebuilds(tmp_path: Path, tiny_gguf: Path, count_conversions: list[Path]) -> None:
    first = build_model(tiny_gguf, models_dir=tmp_path)
    (first / "marker").write_text("old build")
    again = build_model(tiny_gguf, models_dir=tmp_path, force=True)
    assert again == first
    assert len(count_conversions) == 2
    assert not (again / "marker").exists()
    assert read_manifest(again).source_sha256 == sha256_file(tiny_gguf)


def test_changed_source_rebuilds(
    tmp_path: Path, real_metadata: dict[str, Any], count_conversions: list[Path]
) -> None:
    source = tmp_path / "m.gguf"
    write_tiny_gguf(source, real_metadata, seed=1)
    first = build_model(source, models_dir=tmp_path / "models")
    old_revision = read_manifest(first).revision
    write_tiny_gguf(source, real_metadata, seed=2)
    second = build_model(source, models_dir=tmp_path / "models")
    assert second == first
    assert len(count_conversions) == 2
    assert read_manifest(second).revision != old_revision


def test_an_int8_code_bound_is_built_recorded_and_rebuilt_when_it_changes(
    tmp_path: Path, tiny_gguf: Path, count_conversions: list[Path]
) -> None:
    output = tmp_path / "full-range"
    digest = sha256_file(tiny_gguf)
    built = build_model(tiny_gguf, output=output, int8_code_max=127)
    full = read_manifest(built)
    assert full.int8_code_max == 127
    assert full.revision == ModelManifest.compute_revision(digest, "int8", 127)
    assert scan_model_bin(built / "model.bin").int8_code_max == 127  # type: ignore[union-attr]
    assert build_model(tiny_gguf, output=output, int8_code_max=127) == built
    assert len(count_conversions) == 1
    bounded = read_manifest(build_model(tiny_gguf, output=output))
    assert len(count_conversions) == 2
    assert bounded.int8_code_max == WEIGHT_CODE_MAX
    assert bounded.revision == ModelManifest.compute_revision(digest, "int8", WEIGHT_CODE_MAX)
    assert bounded.revision != full.revision


def test_a_non_default_int8_code_bound_needs_an_output(
    tmp_path: Path, tiny_gguf: Path, tiny_dir: Path
) -> None:
    with pytest.raises(ModelBuildError, match="needs an output"):
        build_model(tiny_gguf, models_dir=tmp_path, int8_code_max=127)
    for bad in (0, 128):
        with pytest.raises(ModelBuildError, match=r"within 1\.\.127"):
            build_model(tiny_gguf, output=tmp_path / "x", int8_code_max=bad)
    with pytest.raises(ModelBuildError, match="served with the int8 codes it holds"):
        build_model(tiny_dir, output=tmp_path / "y", int8_code_max=127)
    assert not any(tmp_path.iterdir())
    # Float builds have no int8 codes: the bound does not matter, the cache is used.
    built = build_model(tiny_gguf, quantization="float32", models_dir=tmp_path, int8_code_max=127)
    assert read_manifest(built).int8_code_max == 0


def test_unknown_quantization_lists_valid_ones(tiny_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError) as excinfo:
        build_model(tiny_gguf, quantization="int4", models_dir=tmp_path)
    for name in QUANTIZATIONS:
        assert name in excinfo.value.detail
    assert not any(tmp_path.iterdir())


def test_missing_or_unrecognised_source(tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError, match="does not exist"):
        build_model(tmp_path / "nope.gguf", models_dir=tmp_path)
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelBuildError, match=r"expected a \.gguf file"):
        build_model(tmp_path / "weights.txt", models_dir=tmp_path)


def test_default_build_uses_default_models_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_gguf: Path
) -> None:
    monkeypatch.setenv("TOKENBOOTH_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(build_module, "default_gguf_path", lambda: tiny_gguf)
    built = build_model()
    assert built == tmp_path / f"{DEFAULT_MODEL_NAME}-int8"
    assert read_manifest(built).name == DEFAULT_MODEL_NAME


def test_resolve_model_locates_exactly_what_build_model_builds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_gguf: Path
) -> None:
    monkeypatch.setenv("TOKENBOOTH_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(build_module, "default_gguf_path", lambda: tiny_gguf)
    # Not built yet, and locating builds nothing.
    assert resolve_model(None, "int8", build=False) is None
    assert not any(tmp_path.iterdir())
    built = resolve_model(None, "int8")
    assert built == tmp_path / f"{DEFAULT_MODEL_NAME}-int8"
    assert built == build_model()
    assert resolve_model(None, "int8", build=False) == built
    assert resolve_model("", "int8", build=False) == built  # an unset spec field: the default
    assert resolve_model(None, "float16", build=False) is None


def test_resolve_model_with_a_source(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_gguf: Path, tiny_dir: Path
) -> None:
    monkeypatch.setenv("TOKENBOOTH_MODELS_DIR", str(tmp_path / "models"))
    built = resolve_model(str(tiny_gguf), "float32")
    assert built == tmp_path / "models" / "tiny-llama-float32"
    assert resolve_model(str(tiny_gguf), "float32", build=False) == built
    # A CTranslate2 directory is served in place, built or not.
    assert resolve_model(str(tiny_dir), "int8", build=False) == tiny_dir
    assert resolve_model(tiny_dir, "int8") == tiny_dir


def test_resolve_model_rejects_unknown_quantization(tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError, match="unknown quantization"):
        resolve_model(None, "int4", build=False)
