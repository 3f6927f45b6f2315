"""service.models.files: loading a model directory, and saying what it is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.errors import ModelBuildError
from service.models import (
    CHAT_TEMPLATE_FILENAME,
    MANIFEST_FILENAME,
    TOKENIZER_FILENAME,
    load_model_files,
    read_manifest,
)
from tests.unit.service.models.helpers import copy_without_manifest


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
