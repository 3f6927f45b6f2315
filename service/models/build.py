"""Build (or find) a servable model directory from a GGUF, CTranslate2 or Hugging Face source.

Without an explicit output, builds are cached under :func:`~service.models.paths.cache_dir`
and redone only when the source digest, the quantization or the manifest format changes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal, overload

from service.errors import ModelBuildError
from service.models.convert import convert_gguf
from service.models.int8 import CTRANSLATE2_CODE_MAX, WEIGHT_CODE_MAX, is_int8
from service.models.manifest import (
    MANIFEST_FORMAT_VERSION,
    ModelManifest,
    new_manifest,
    read_manifest,
    write_manifest,
)
from service.models.paths import (
    MODEL_BIN_FILENAME,
    TOKENIZER_FILENAME,
    cache_dir,
    default_gguf_path,
    source_name,
)
from service.models.sources import adopt_ctranslate2_dir, build_from_hf, require_transformers
from service.models.storage import (
    build_lock,
    check_replaceable,
    publish,
    sha256_dir,
    sha256_file,
    staging_dir,
)
from service.settings import QUANTIZATIONS

__all__ = ["build_model", "check_quantization", "resolve_model"]

logger = logging.getLogger(__name__)


def check_quantization(quantization: str) -> None:
    """Reject a quantization CTranslate2 builds are not made with, listing the valid ones.

    Raises:
        ModelBuildError: ``quantization`` is not one of :data:`QUANTIZATIONS`.
    """
    if quantization not in QUANTIZATIONS:
        raise ModelBuildError(
            f"unknown quantization {quantization!r}; choose one of: {', '.join(QUANTIZATIONS)}"
        )


def build_model(
    source: Path | None = None,
    *,
    quantization: str = "int8",
    output: Path | None = None,
    models_dir: Path | None = None,
    force: bool = False,
    int8_code_max: int = WEIGHT_CODE_MAX,
) -> Path:
    """Build (or find) a servable CTranslate2 model directory and return its path.

    ``source`` may be None (the default SmolLM2 GGUF), a ``.gguf`` file (converted without
    torch), a CTranslate2 directory (returned as is, gaining a manifest if it lacks one) or a
    Hugging Face directory (converted with ``transformers``, the ``hf`` extra). Without
    ``output`` the result is cached in ``models_dir/<name>-<quantization>`` and rebuilt only
    when the source digest changes or ``force`` is set. ``int8_code_max`` bounds int8 weight
    codes (:mod:`service.models.int8`); another bound than the default needs ``output`` (the
    cache only ever holds default builds) and a source to convert.

    Raises:
        ModelBuildError: Unknown quantization, unusable source, a failed conversion, or an
            ``int8_code_max`` outside 1..127, or off the default without ``output`` or for a
            CTranslate2 directory.
        MissingDependencyError: A Hugging Face source without ``transformers`` installed.
    """
    check_quantization(quantization)
    if not 1 <= int8_code_max <= CTRANSLATE2_CODE_MAX:
        raise ModelBuildError(
            f"int8 code bound must be within 1..{CTRANSLATE2_CODE_MAX}, not {int8_code_max}"
        )
    custom_bound = is_int8(quantization) and int8_code_max != WEIGHT_CODE_MAX
    if custom_bound and output is None:
        raise ModelBuildError(
            f"an int8 code bound other than {WEIGHT_CODE_MAX} needs an output directory"
        )
    src = default_gguf_path() if source is None else Path(source).expanduser()
    if not src.exists():
        raise ModelBuildError(f"model source {src} does not exist")
    if _is_ctranslate2_dir(src):
        if custom_bound:
            raise ModelBuildError(
                f"{src} is a CTranslate2 model, served with the int8 codes it holds; an int8 "
                "code bound needs a GGUF or Hugging Face source"
            )
        logger.info("%s is a CTranslate2 model; served with its stored weights as is", src)
        return adopt_ctranslate2_dir(src, output=output, force=force)
    is_gguf = _check_convertible(src)
    name = source_name(None if source is None else src)
    target = (
        Path(output).expanduser()
        if output is not None
        else cache_dir(name, quantization, models_dir)
    )
    with build_lock(target):
        source_sha256 = sha256_file(src) if is_gguf else sha256_dir(src)
        bound = int8_code_max if is_int8(quantization) else 0
        if not force and _up_to_date(target, source_sha256, quantization, bound) is not None:
            logger.info("model %s is up to date (%s)", target, source_sha256[:12])
            return target
        if output is not None:
            check_replaceable(target, force=force)
        _build_into(target, src, name, source_sha256, quantization, int8_code_max, is_gguf=is_gguf)
    return target


@overload
def resolve_model(
    source: str | Path | None, quantization: str, *, build: Literal[True] = ...
) -> Path: ...


@overload
def resolve_model(
    source: str | Path | None, quantization: str, *, build: Literal[False]
) -> Path | None: ...


def resolve_model(
    source: str | Path | None, quantization: str, *, build: bool = True
) -> Path | None:
    """Build or locate the model a replica serves, in the default cache, and return its dir.

    Clients (load generators, launchers) call this instead of composing cache paths, so they
    find exactly the directory :func:`build_model` writes. ``source`` None or empty means the
    default model. With ``build`` False nothing is converted: the directory is returned only
    if it already exists, else None (a client that only needs the tokenizer).

    Raises:
        ModelBuildError: Unknown quantization; with ``build``, as :func:`build_model`.
        MissingDependencyError: With ``build``, as :func:`build_model`.
    """
    check_quantization(quantization)
    path = Path(source).expanduser() if source else None
    if build:
        return build_model(path, quantization=quantization)
    if path is not None and _is_ctranslate2_dir(path):
        return path  # served in place, as build_model does
    located = cache_dir(source_name(path), quantization)
    return located if located.is_dir() else None


def _is_ctranslate2_dir(path: Path) -> bool:
    return path.is_dir() and (path / MODEL_BIN_FILENAME).is_file()


def _check_convertible(src: Path) -> bool:
    """Check a source tokenbooth converts; True for a GGUF file, False for a HF directory."""
    if src.is_file() and src.suffix.lower() == ".gguf":
        return True
    if src.is_dir() and (src / "config.json").is_file():
        require_transformers()
        if not (src / TOKENIZER_FILENAME).is_file():
            raise ModelBuildError(
                f"Hugging Face model {src} has no {TOKENIZER_FILENAME} (a fast tokenizer); "
                "tokenbooth needs one to serve it"
            )
        return False
    raise ModelBuildError(
        f"cannot build from {src}: expected a .gguf file, a CTranslate2 directory "
        "(with model.bin) or a Hugging Face directory (with config.json)"
    )


def _up_to_date(
    target: Path, source_sha256: str, quantization: str, int8_code_max: int
) -> ModelManifest | None:
    """Return the target's manifest when it is a complete build of this exact source."""
    if not (target / MODEL_BIN_FILENAME).is_file() or not (target / TOKENIZER_FILENAME).is_file():
        return None
    try:
        manifest = read_manifest(target)
    except ModelBuildError:
        return None
    if (
        manifest.source_sha256 == source_sha256
        and manifest.quantization == quantization
        and manifest.format_version == MANIFEST_FORMAT_VERSION
        and manifest.int8_code_max == int8_code_max
    ):
        return manifest
    return None


def _build_into(
    target: Path,
    src: Path,
    name: str,
    source_sha256: str,
    quantization: str,
    int8_code_max: int,
    *,
    is_gguf: bool,
) -> None:
    """Convert in a staging directory and publish it as ``target`` (call under the lock)."""
    started = time.perf_counter()
    logger.info("building %s (%s) from %s into %s", name, quantization, src, target)
    with staging_dir(target) as staging:
        if is_gguf:
            manifest = _build_from_gguf(
                src, staging, name, source_sha256, quantization, int8_code_max
            )
        else:
            manifest = build_from_hf(
                src, staging, name, source_sha256, quantization, int8_code_max=int8_code_max
            )
        write_manifest(staging, manifest)
        publish(staging, target)
    logger.info(
        "built %s: %d parameters, revision %s, in %.2fs",
        target,
        manifest.parameter_count,
        manifest.revision,
        time.perf_counter() - started,
    )


def _build_from_gguf(
    src: Path, staging: Path, name: str, source_sha256: str, quantization: str, int8_code_max: int
) -> ModelManifest:
    converted = convert_gguf(src, staging, quantization, int8_code_max=int8_code_max)
    vocab = converted.vocab
    return new_manifest(
        staging,
        name=name,
        source=src,
        source_sha256=source_sha256,
        quantization=quantization,
        architecture="llama",
        context_length=converted.shape.context_length,
        bos_token=vocab.bos_token,
        eos_tokens=vocab.eos_tokens,
        add_bos_token=vocab.add_bos_token,
        parameter_count=converted.parameter_count,
        int8_code_max=int8_code_max if is_int8(quantization) else 0,
    )
