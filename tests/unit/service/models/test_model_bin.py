"""service.models.model_bin: parameter counts and quantization read from model.bin headers."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from service.models import build_model, read_manifest
from service.models.int8 import WEIGHT_CODE_MAX
from service.models.model_bin import scan_model_bin


def test_scan_counts_the_tied_head_once(tiny_dir: Path) -> None:
    summary = scan_model_bin(tiny_dir / "model.bin")
    assert summary is not None
    assert summary.parameter_count == read_manifest(tiny_dir).parameter_count
    assert summary.quantization == "float32"
    assert summary.int8_code_max == 0


@pytest.mark.parametrize(
    ("quantization", "stored"),
    [("int8", "int8"), ("int8_float16", "int8_float16"), ("float16", "float16")],
)
def test_scan_reads_the_stored_quantization(
    tmp_path: Path, tiny_gguf: Path, quantization: str, stored: str
) -> None:
    built = build_model(tiny_gguf, quantization=quantization, models_dir=tmp_path)
    summary = scan_model_bin(built / "model.bin")
    assert summary is not None
    assert summary.quantization == stored
    # int8 builds use the whole bounded code range, no more; the manifest records it.
    expected = WEIGHT_CODE_MAX if stored.startswith("int8") else 0
    assert summary.int8_code_max == expected
    assert read_manifest(built).int8_code_max == expected


def test_scan_of_an_unreadable_file_is_none(tmp_path: Path) -> None:
    assert scan_model_bin(tmp_path / "absent.bin") is None
    (tmp_path / "other.bin").write_bytes((5).to_bytes(4, "little"))  # another binary version
    assert scan_model_bin(tmp_path / "other.bin") is None
    (tmp_path / "cut.bin").write_bytes((6).to_bytes(4, "little") + b"\x05")
    assert scan_model_bin(tmp_path / "cut.bin") is None


def _model_bin(type_id: int, payload: bytes, declared: int) -> bytes:
    """A one-variable model.bin (binary version 6): a 2x2 matrix named ``w``."""

    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    header = struct.pack("<I", 6) + string("Spec") + struct.pack("<II", 1, 1)
    variable = string("w") + struct.pack("<B2I", 2, 2, 2) + struct.pack("<BI", type_id, declared)
    return header + variable + payload


@pytest.mark.parametrize(("type_id", "itemsize"), [(1, 1), (0, 4)])  # int8 (read), float32
def test_scan_of_a_file_cut_inside_its_last_tensor_is_none(
    tmp_path: Path, type_id: int, itemsize: int
) -> None:
    whole = tmp_path / "whole.bin"
    whole.write_bytes(_model_bin(type_id, bytes(4 * itemsize), 4 * itemsize))
    summary = scan_model_bin(whole)
    assert summary is not None and summary.parameter_count == 4
    cut = tmp_path / "cut.bin"
    cut.write_bytes(_model_bin(type_id, bytes(4 * itemsize - 1), 4 * itemsize))
    assert scan_model_bin(cut) is None
