"""service.models.manifest: round trip, strict parsing, revisions, read errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from service.errors import ModelBuildError
from service.models import MANIFEST_FILENAME, ModelManifest, read_manifest


def test_manifest_round_trip(tiny_dir: Path) -> None:
    manifest = read_manifest(tiny_dir)
    assert ModelManifest.from_dict(json.loads(manifest.to_json())) == manifest
    assert json.loads((tiny_dir / MANIFEST_FILENAME).read_text()) == json.loads(manifest.to_json())
    # Unknown keys from a newer minor writer are ignored.
    data = json.loads(manifest.to_json()) | {"future_field": 1}
    assert ModelManifest.from_dict(data) == manifest


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": None}, "'name'"),
        ({"parameter_count": "135M"}, "'parameter_count'"),
        ({"context_length": True}, "'context_length'"),
        ({"eos_tokens": "<|im_end|>"}, "'eos_tokens'"),
        ({"format_version": 99}, "newer"),
        ({"int8_code_max": "64"}, "'int8_code_max'"),
    ],
)
def test_manifest_rejects_malformed(tiny_dir: Path, change: dict[str, Any], message: str) -> None:
    data = json.loads(read_manifest(tiny_dir).to_json()) | change
    with pytest.raises(ModelBuildError, match=message):
        ModelManifest.from_dict(data)


def test_manifest_revision_follows_source_and_quantization() -> None:
    import hashlib

    revision = ModelManifest.compute_revision("ab" * 32, "int8")
    assert revision == hashlib.sha256(("ab" * 32 + "int8").encode()).hexdigest()[:12]
    assert revision != ModelManifest.compute_revision("ab" * 32, "float16")
    # The int8 code range changes the weights, so the revision too.
    assert revision != ModelManifest.compute_revision("ab" * 32, "int8", 64)
    assert ModelManifest.compute_revision("ab" * 32, "int8", 64) != (
        ModelManifest.compute_revision("ab" * 32, "int8", 127)
    )


def test_manifest_of_format_1_reads_without_a_code_range(tiny_dir: Path) -> None:
    data = json.loads(read_manifest(tiny_dir).to_json())
    del data["int8_code_max"]
    data["format_version"] = 1
    assert ModelManifest.from_dict(data).int8_code_max == 0


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError, match=r"no tokenbooth_manifest\.json"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILENAME).write_text("{not json")
    with pytest.raises(ModelBuildError, match="cannot read"):
        read_manifest(tmp_path)


def test_manifest_is_frozen(tiny_dir: Path) -> None:
    manifest = read_manifest(tiny_dir)
    with pytest.raises(AttributeError):
        manifest.name = "other"  # type: ignore[misc]
    assert replace(manifest, name="other").name == "other"
