"""service.models.sources: CTranslate2 directories served as is, Hugging Face ones converted."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from service.errors import MissingDependencyError, ModelBuildError
from service.models import (
    MANIFEST_FILENAME,
    TOKENIZER_FILENAME,
    build_model,
    load_model_files,
    read_manifest,
)
from service.models import build as build_module
from service.models.int8 import WEIGHT_CODE_MAX
from service.models.storage import sha256_dir
from tests.support.tiny_model import tiny_llama_spec
from tests.unit.service.models.helpers import copy_without_manifest


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
    """The HF path's plumbing, with CTranslate2's converter replaced by a stand-in.

    Mocked: transformers is not installed here. The stand-in's ``_load`` returns a real tiny
    Llama spec, so tokenbooth's own quantize-and-save runs as for a real checkpoint.
    """
    hf = make_hf_dir(tmp_path / "hf", tiny_dir)
    seen: dict[str, Any] = {}

    class FakeConverter:
        def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
            seen["source"] = model_name_or_path

        def _load(self) -> Any:
            return tiny_llama_spec()[0].spec

    import ctranslate2.converters

    monkeypatch.setattr(build_module, "require_transformers", lambda: None)
    monkeypatch.setattr(ctranslate2.converters, "TransformersConverter", FakeConverter)
    built = build_model(hf, quantization="int8_float16", models_dir=tmp_path / "models")
    assert built == tmp_path / "models" / "hf-int8_float16"
    assert seen == {"source": str(hf)}
    files = load_model_files(built)
    assert files.chat_template == "{{ bos_token }}{{ messages[0]['content'] }}"
    manifest = files.manifest
    assert manifest.architecture == "llama"
    assert manifest.context_length == 4096
    assert manifest.eos_tokens == ["<|im_end|>", "<|endoftext|>"]
    assert manifest.source_sha256 == sha256_dir(hf)
    assert manifest.quantization == "int8_float16"
    assert manifest.int8_code_max == WEIGHT_CODE_MAX  # CTranslate2's converter would give 127
    # Unchanged source: cached.
    monkeypatch.setattr(ctranslate2.converters, "TransformersConverter", None)
    assert build_model(hf, quantization="int8_float16", models_dir=tmp_path / "models") == built
