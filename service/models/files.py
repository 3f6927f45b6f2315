"""Load what serving a built model directory needs besides the weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.errors import ModelBuildError
from service.models.manifest import ModelManifest, read_manifest
from service.models.paths import (
    CHAT_TEMPLATE_FILENAME,
    MANIFEST_FILENAME,
    MODEL_BIN_FILENAME,
    TOKENIZER_FILENAME,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["ModelFiles", "load_model_files"]


@dataclass(frozen=True)
class ModelFiles:
    """Everything besides the weights that serving a model directory needs."""

    model_dir: Path
    manifest: ModelManifest
    tokenizer: Tokenizer
    chat_template: str | None = None


def load_model_files(model_dir: Path) -> ModelFiles:
    """Load the manifest, tokenizer and chat template of a built model directory.

    Raises:
        ModelBuildError: The directory, ``model.bin``, ``tokenizer.json`` or the manifest is
            missing or unreadable.
    """
    from tokenizers import Tokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelBuildError(f"model directory {model_dir} does not exist")
    missing = [
        name
        for name in (MODEL_BIN_FILENAME, TOKENIZER_FILENAME, MANIFEST_FILENAME)
        if not (model_dir / name).is_file()
    ]
    if missing:
        raise ModelBuildError(
            f"model directory {model_dir} is incomplete (missing {', '.join(missing)}); "
            "build it with service.models.build_model / `tokenbooth build`"
        )
    manifest = read_manifest(model_dir)
    try:
        tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILENAME))
    except Exception as exc:  # tokenizers raises a bare Exception on parse errors
        raise ModelBuildError(f"cannot load {model_dir / TOKENIZER_FILENAME}: {exc}") from exc
    template_path = model_dir / CHAT_TEMPLATE_FILENAME
    template = template_path.read_text(encoding="utf-8") if template_path.is_file() else None
    return ModelFiles(
        model_dir=model_dir, manifest=manifest, tokenizer=tokenizer, chat_template=template
    )
