"""``tokenbooth_manifest.json``: what a model directory holds and where it came from.

The manifest is written last, so a directory with a manifest is a complete build.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from service.errors import ModelBuildError
from service.models.model_bin import scan_model_bin
from service.models.paths import MANIFEST_FILENAME, MODEL_BIN_FILENAME
from service.models.storage import write_text_atomic

__all__ = [
    "MANIFEST_FORMAT_VERSION",
    "ModelManifest",
    "new_manifest",
    "read_manifest",
    "write_manifest",
]

MANIFEST_FORMAT_VERSION: Final = 2
"""2: int8 builds hold codes bounded by 64 (service.models.int8) and record it; 1 held 127."""


@dataclass(frozen=True)
class ModelManifest:
    """What a model directory holds and where it came from (``tokenbooth_manifest.json``).

    ``context_length`` is 0 when the source does not say (a foreign CTranslate2 directory).
    ``revision`` identifies the weights: it changes with the source file, the quantization or
    ``int8_code_max``, the bound on ``model.bin``'s int8 weight codes: what a build used, or
    what a foreign directory's weights reach; 0 without int8 weights, or unknown (format 1,
    whose int8 builds used CTranslate2's 127).
    """

    name: str
    source: str
    source_sha256: str
    quantization: str
    parameter_count: int
    built_at: str
    ctranslate2_version: str
    architecture: str
    context_length: int
    vocab_size: int
    bos_token: str
    eos_tokens: list[str]
    revision: str
    format_version: int = MANIFEST_FORMAT_VERSION
    add_bos_token: bool = False
    int8_code_max: int = 0

    @staticmethod
    def compute_revision(source_sha256: str, quantization: str, int8_code_max: int = 0) -> str:
        """Return the 12-hex revision for a source digest, a quantization and int8 code range."""
        key = source_sha256 + quantization + (f"/codes{int8_code_max}" if int8_code_max else "")
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]

    def to_json(self) -> str:
        """Serialise to the JSON text stored in ``tokenbooth_manifest.json``."""
        return json.dumps(asdict(self), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelManifest:
        """Parse a manifest mapping, checking every field's type; unknown keys are ignored.

        Raises:
            ModelBuildError: A field is missing or has the wrong type, or the manifest was
                written by a newer format.
        """
        str_fields = (
            "name",
            "source",
            "source_sha256",
            "quantization",
            "built_at",
            "ctranslate2_version",
            "architecture",
            "bos_token",
            "revision",
        )
        int_fields = ("parameter_count", "context_length", "vocab_size", "format_version")
        values: dict[str, Any] = {}
        code_max = data.get("int8_code_max", 0)
        if not isinstance(code_max, int) or isinstance(code_max, bool):
            raise ModelBuildError("model manifest: field 'int8_code_max' must be an integer")
        values["int8_code_max"] = code_max
        for key in str_fields:
            value = data.get(key)
            if not isinstance(value, str):
                raise ModelBuildError(f"model manifest: field {key!r} must be a string")
            values[key] = value
        for key in int_fields:
            value = data.get(key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ModelBuildError(f"model manifest: field {key!r} must be an integer")
            values[key] = value
        eos = data.get("eos_tokens")
        if not isinstance(eos, list) or not all(isinstance(t, str) for t in eos):
            raise ModelBuildError("model manifest: field 'eos_tokens' must be a list of strings")
        values["eos_tokens"] = list(eos)
        add_bos = data.get("add_bos_token", False)
        if not isinstance(add_bos, bool):
            raise ModelBuildError("model manifest: field 'add_bos_token' must be a boolean")
        values["add_bos_token"] = add_bos
        if values["format_version"] > MANIFEST_FORMAT_VERSION:
            raise ModelBuildError(
                f"model manifest format {values['format_version']} is newer than this "
                f"tokenbooth understands ({MANIFEST_FORMAT_VERSION}); upgrade tokenbooth "
                "or rebuild the model"
            )
        return cls(**values)


def read_manifest(model_dir: Path) -> ModelManifest:
    """Read ``tokenbooth_manifest.json`` from a model directory.

    Raises:
        ModelBuildError: The manifest is missing, unreadable or malformed.
    """
    path = Path(model_dir) / MANIFEST_FILENAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelBuildError(
            f"{model_dir} has no {MANIFEST_FILENAME}; build it with `tokenbooth build` "
            "(service.models.build_model)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelBuildError(f"cannot read model manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelBuildError(f"model manifest {path} is not a JSON object")
    return ModelManifest.from_dict(data)


def write_manifest(model_dir: Path, manifest: ModelManifest) -> None:
    """Write the manifest atomically: its presence marks the directory complete."""
    write_text_atomic(model_dir / MANIFEST_FILENAME, manifest.to_json())


def new_manifest(
    model_dir: Path,
    *,
    name: str,
    source: Path,
    source_sha256: str,
    quantization: str,
    architecture: str,
    context_length: int,
    bos_token: str,
    eos_tokens: Sequence[str],
    add_bos_token: bool = False,
    parameter_count: int | None = None,
    int8_code_max: int | None = None,
) -> ModelManifest:
    """Describe a finished model directory; ``parameter_count`` or ``int8_code_max`` None:
    read from model.bin (the count of its parameters, the largest int8 code it holds)."""
    summary = None
    if parameter_count is None or int8_code_max is None:
        summary = scan_model_bin(model_dir / MODEL_BIN_FILENAME)
    if parameter_count is None:
        parameter_count = summary.parameter_count if summary else 0
    code_max = (
        int8_code_max if int8_code_max is not None else (summary.int8_code_max if summary else 0)
    )
    return ModelManifest(
        name=name,
        source=str(source),
        source_sha256=source_sha256,
        quantization=quantization,
        parameter_count=parameter_count,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ctranslate2_version=_ctranslate2_version(),
        architecture=architecture,
        context_length=context_length,
        vocab_size=_vocabulary_size(model_dir),
        bos_token=bos_token,
        eos_tokens=list(eos_tokens),
        revision=ModelManifest.compute_revision(source_sha256, quantization, code_max),
        add_bos_token=add_bos_token,
        int8_code_max=code_max,
    )


def _vocabulary_size(model_dir: Path) -> int:
    json_path = model_dir / "vocabulary.json"
    if json_path.is_file():
        tokens = json.loads(json_path.read_text(encoding="utf-8"))
        return len(tokens) if isinstance(tokens, list) else 0
    txt_path = model_dir / "vocabulary.txt"
    if txt_path.is_file():
        return len(txt_path.read_text(encoding="utf-8").splitlines())
    return 0


def _ctranslate2_version() -> str:
    import ctranslate2

    return str(ctranslate2.__version__)
