"""service.models.gguf: the fast header parser agrees with gguf.GGUFReader; clear errors."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize

from service.errors import ModelBuildError
from service.models import build_model
from service.models import gguf as gguf_reader
from tests.unit.service.models.helpers import llama_cpp_permute


def test_unpermute_inverts_llama_cpp_permute() -> None:
    weight = np.arange(6 * 16 * 5, dtype=np.float32).reshape(6 * 16, 5)
    for heads in (1, 2, 6):
        assert np.array_equal(
            gguf_reader.unpermute_rotary(llama_cpp_permute(weight, heads), heads), weight
        )


def test_gguf_parser_matches_gguf_reader(tmp_path: Path) -> None:
    """Our fast GGUF header parser agrees with gguf.GGUFReader on values and tensor data."""
    path = tmp_path / "kv.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -5)
    writer.add_uint16("t.u16", 60000)
    writer.add_int16("t.i16", -3000)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -7)
    writer.add_float32("t.f32", 0.25)
    writer.add_uint64("t.u64", 2**40)
    writer.add_int64("t.i64", -(2**40))
    writer.add_float64("t.f64", 1e-300)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo ✓")
    writer.add_array("t.strs", ["a", "", "Ġthe"])
    writer.add_array("t.ints", [1, -2, 3])
    writer.add_array("t.floats", [0.5, 1.5])
    writer.add_array("t.bools", [True, False])
    rng = np.random.default_rng(0)
    writer.add_tensor("f32", rng.standard_normal((3, 64)).astype(np.float32))
    writer.add_tensor("f16_1d", rng.standard_normal(64).astype(np.float16))
    for qtype in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1):
        q = quantize(rng.standard_normal((5, 96)).astype(np.float32), qtype)
        writer.add_tensor(qtype.name, q, raw_shape=q.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ours = gguf_reader.parse_gguf(path)
    reader = gguf.GGUFReader(path)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == theirs
    assert ours.metadata["t.str"] == "héllo ✓"
    assert ours.metadata["t.bools"] == [True, False]
    data = np.memmap(path, dtype=np.uint8, mode="r")
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for tensor in reader.tensors:
        mine = ours.tensors[tensor.name]
        assert mine.ggml_type == tensor.tensor_type
        assert mine.offset == tensor.data_offset
        expected = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        actual = gguf_reader.dequantize_tensor(data, mine)
        assert actual.shape == tuple(reversed(tensor.shape.tolist()))
        assert np.array_equal(actual, expected.reshape(actual.shape))
        assert actual.flags.writeable


def test_truncated_gguf_is_a_clear_error(tmp_path: Path, tiny_gguf: Path) -> None:
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[:-1000])
    with pytest.raises(ModelBuildError, match="past the end"):
        build_model(truncated, models_dir=tmp_path / "models")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelBuildError, match="bad magic"):
        build_model(tmp_path / "junk.gguf", models_dir=tmp_path / "models")
