"""Model directories built elsewhere: Hugging Face checkpoints and CTranslate2 directories.

A Hugging Face directory is converted with CTranslate2's ``TransformersConverter`` (the
``hf`` extra); a CTranslate2 directory is served with its stored weights as is, gaining a
manifest (and a chat template) read from the files that came with it.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.errors import MissingDependencyError, ModelBuildError
from service.models.convert import save_spec
from service.models.int8 import WEIGHT_CODE_MAX, is_int8
from service.models.manifest import ModelManifest, new_manifest, read_manifest, write_manifest
from service.models.model_bin import scan_model_bin
from service.models.paths import (
    CHAT_TEMPLATE_FILENAME,
    MANIFEST_FILENAME,
    MODEL_BIN_FILENAME,
    TOKENIZER_FILENAME,
)
from service.models.storage import (
    build_lock,
    check_replaceable,
    publish,
    sha256_file,
    staging_dir,
    write_text_atomic,
)

__all__ = ["adopt_ctranslate2_dir", "build_from_hf", "require_transformers"]

logger = logging.getLogger(__name__)


def require_transformers() -> None:
    """Fail early, naming the extra, when the Hugging Face converter cannot run.

    Raises:
        MissingDependencyError: ``transformers`` or ``torch`` is not installed.
    """
    purpose = "converting Hugging Face model directories"
    for package in ("transformers", "torch"):
        try:
            importlib.import_module(package)
        except ImportError:
            raise MissingDependencyError(package, extra="hf", purpose=purpose) from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelBuildError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _hf_chat_template(model_dir: Path) -> str | None:
    jinja = model_dir / CHAT_TEMPLATE_FILENAME
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = _read_json(model_dir / "tokenizer_config.json").get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        for entry in template:
            if isinstance(entry, dict) and entry.get("name") == "default":
                value = entry.get("template")
                return value if isinstance(value, str) else None
    return None


def _hf_context_length(*configs: Mapping[str, Any]) -> int:
    for config in configs:
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        value = config.get("model_max_length")  # tokenizer_config.json; huge means unset
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10_000_000:
            return value
    return 0


def _eos_tokens(model_dir: Path, eos_token: str, source_dir: Path | None) -> list[str]:
    """CTranslate2's eos token plus any extra ``eos_token_id`` from generation_config.json."""
    eos = [eos_token] if eos_token else []
    if source_dir is None:
        return eos
    ids = _read_json(source_dir / "generation_config.json").get("eos_token_id")
    id_list = ids if isinstance(ids, list) else [ids]
    vocab_path = model_dir / "vocabulary.json"
    tokens = json.loads(vocab_path.read_text(encoding="utf-8")) if vocab_path.is_file() else []
    for token_id in id_list:
        if isinstance(token_id, int) and 0 <= token_id < len(tokens):
            token = tokens[token_id]
            if isinstance(token, str) and token not in eos:
                eos.append(token)
    return eos


def build_from_hf(
    src: Path,
    staging: Path,
    name: str,
    source_sha256: str,
    quantization: str,
    *,
    int8_code_max: int = WEIGHT_CODE_MAX,
) -> ModelManifest:
    """Convert a Hugging Face directory into ``staging`` and describe the result.

    Raises:
        ModelBuildError: CTranslate2 cannot convert the model.
    """
    from ctranslate2.converters import TransformersConverter

    converter = TransformersConverter(str(src), low_cpu_mem_usage=True)
    try:
        # Converter.convert is _load, validate, optimize, save (plus a conversion report for
        # Drama 3 checkpoints, which tokenbooth does not serve); save_spec does the same
        # with int8 codes no x86 GEMM saturates (service.models.int8).
        spec = converter._load()
        if spec is not None:
            save_spec(spec, staging, quantization, int8_code_max=int8_code_max)
    except (NotImplementedError, ValueError, RuntimeError, OSError) as exc:
        raise ModelBuildError(f"CTranslate2 could not convert {src}: {exc}") from exc
    if spec is None:
        raise ModelBuildError(f"CTranslate2's TransformersConverter does not convert {src}")
    if not (staging / TOKENIZER_FILENAME).is_file():
        shutil.copyfile(src / TOKENIZER_FILENAME, staging / TOKENIZER_FILENAME)
    template = _hf_chat_template(src)
    if template is not None and not (staging / CHAT_TEMPLATE_FILENAME).is_file():
        (staging / CHAT_TEMPLATE_FILENAME).write_text(template, encoding="utf-8")
    hf_config = _read_json(src / "config.json")
    ct2_config = _read_json(staging / "config.json")
    model_type = hf_config.get("model_type")
    return new_manifest(
        staging,
        name=name,
        source=src,
        source_sha256=source_sha256,
        quantization=quantization,
        architecture=model_type if isinstance(model_type, str) else "unknown",
        context_length=_hf_context_length(hf_config, _read_json(src / "tokenizer_config.json")),
        bos_token=str(ct2_config.get("bos_token") or ""),
        eos_tokens=_eos_tokens(staging, str(ct2_config.get("eos_token") or ""), src),
        add_bos_token=bool(_read_json(src / "tokenizer_config.json").get("add_bos_token", False)),
        int8_code_max=int8_code_max if is_int8(quantization) else 0,
    )


def adopt_ctranslate2_dir(src: Path, *, output: Path | None, force: bool) -> Path:
    """Serve an existing CTranslate2 directory, copying it to ``output`` when one is given.

    Raises:
        ModelBuildError: The directory has no ``tokenizer.json``, a malformed manifest, or
            cannot take the manifest written for it; or ``output`` cannot be replaced.
    """
    if not (src / TOKENIZER_FILENAME).is_file():
        raise ModelBuildError(
            f"CTranslate2 model {src} has no {TOKENIZER_FILENAME}; copy the Hugging Face "
            "fast tokenizer file of the original model into it"
        )
    model_dir = src
    if output is not None and Path(output).expanduser().resolve() != src.resolve():
        model_dir = Path(output).expanduser()
        with build_lock(model_dir):
            check_replaceable(model_dir, force=force)
            with staging_dir(model_dir) as staging:
                shutil.copytree(src, staging, dirs_exist_ok=True)
                publish(staging, model_dir)
    if (model_dir / MANIFEST_FILENAME).is_file():
        read_manifest(model_dir)  # fail now, not at serve time, if it is malformed
        return model_dir

    logger.info("writing a manifest for CTranslate2 model %s", model_dir)
    template = _hf_chat_template(model_dir)
    manifest = _describe_ctranslate2_dir(model_dir, src)
    try:
        if template is not None and not (model_dir / CHAT_TEMPLATE_FILENAME).is_file():
            write_text_atomic(model_dir / CHAT_TEMPLATE_FILENAME, template)
        write_manifest(model_dir, manifest)
    except OSError as exc:
        raise ModelBuildError(
            f"cannot write {MANIFEST_FILENAME} into {model_dir} ({exc}); build a writable "
            "copy with build_model(source, output=...)"
        ) from exc
    return model_dir


def _describe_ctranslate2_dir(model_dir: Path, src: Path) -> ModelManifest:
    """A manifest for a foreign CTranslate2 directory, from its files and one model.bin scan."""
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json")
    ct2_config = _read_json(model_dir / "config.json")
    summary = scan_model_bin(model_dir / MODEL_BIN_FILENAME)
    quantization = summary.quantization if summary else "unknown"
    source_config = _read_json(model_dir / "source_config.json")
    context_length = _hf_context_length(source_config, tokenizer_config)
    if context_length == 0:
        logger.warning("context length of %s is unknown; recorded as 0", model_dir)
    model_type = source_config.get("model_type")
    return new_manifest(
        model_dir,
        name=model_dir.resolve().name,
        source=src,
        source_sha256=sha256_file(model_dir / MODEL_BIN_FILENAME),
        quantization=quantization,
        architecture=model_type if isinstance(model_type, str) else "unknown",
        context_length=context_length,
        bos_token=str(ct2_config.get("bos_token") or ""),
        eos_tokens=_eos_tokens(model_dir, str(ct2_config.get("eos_token") or ""), None),
        add_bos_token=bool(tokenizer_config.get("add_bos_token", False)),
        parameter_count=summary.parameter_count if summary else 0,
        int8_code_max=summary.int8_code_max if summary else 0,
    )
