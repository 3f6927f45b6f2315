"""Walk a CTranslate2 ``model.bin``: parameter count, stored quantization, int8 code range.

Used to describe CTranslate2 directories that were built elsewhere, and to count the
parameters of a build; only one int8 matrix at a time is held in memory (to bound its codes).
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

__all__ = ["ModelBinSummary", "scan_model_bin"]

logger = logging.getLogger(__name__)

# DataType enum order in ctranslate2/types.h (see ctranslate2.specs.model_spec._dtype_to_type_id).
_CT2_DTYPES: Final = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_CT2_BINARY_VERSION: Final = 6


@dataclass(frozen=True)
class ModelBinSummary:
    """What a ``model.bin`` says about its weights."""

    parameter_count: int
    quantization: str
    int8_code_max: int = 0
    """Largest ``|code|`` of the int8 matrices (0 without any): 127 from CTranslate2's own
    converter, at most :data:`~service.models.int8.WEIGHT_CODE_MAX` from tokenbooth's."""


def scan_model_bin(path: Path) -> ModelBinSummary | None:
    """Count parameters, infer the stored quantization and bound the int8 codes of ``model.bin``.

    Scalars and ``*_scale`` / ``*_zero`` quantization constants are not parameters. Aliases
    count once: they are tied weights, or (rarely) tensors that happen to be identical, such
    as untrained all-ones norms, which CTranslate2 also deduplicates. Only the binary layout
    written by this CTranslate2 generation (version 6) is read; other versions return None.
    """

    def read(handle: Any, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        raw = handle.read(size)
        if len(raw) != size:
            raise EOFError(path)
        return struct.unpack(fmt, raw)

    def read_string(handle: Any) -> str:
        (length,) = read(handle, "<H")
        raw: bytes = handle.read(length)
        return raw[:-1].decode("utf-8")

    count = 0
    code_max = 0
    size = path.stat().st_size if path.is_file() else 0
    weight_types: set[str] = set()
    other_types: set[str] = set()
    try:
        with path.open("rb") as handle:
            (version,) = read(handle, "<I")
            if version != _CT2_BINARY_VERSION:
                return None
            read_string(handle)  # spec name
            read(handle, "<I")  # spec revision
            (num_variables,) = read(handle, "<I")
            for _ in range(num_variables):
                name = read_string(handle)
                (rank,) = read(handle, "<B")
                dims = read(handle, f"<{rank}I") if rank else ()
                (type_id, num_bytes) = read(handle, "<BI")
                if rank >= 2 and _CT2_DTYPES[type_id] == "int8":
                    raw = handle.read(num_bytes)
                    if len(raw) != num_bytes:
                        raise EOFError(path)
                    codes = np.frombuffer(raw, dtype=np.int8)
                    if codes.size:
                        code_max = max(code_max, -int(codes.min()), int(codes.max()))
                else:
                    handle.seek(num_bytes, os.SEEK_CUR)
                    if handle.tell() > size:
                        raise EOFError(path)  # cut inside this variable
                leaf = name.rsplit("/", 1)[-1]
                if rank == 0 or leaf.endswith(("_scale", "_zero")):
                    continue
                count += int(np.prod(dims))
                (weight_types if rank >= 2 else other_types).add(_CT2_DTYPES[type_id])
    except (OSError, EOFError, struct.error, IndexError, UnicodeDecodeError) as exc:
        logger.warning("cannot inspect %s: %s", path, exc)
        return None
    return ModelBinSummary(
        parameter_count=count,
        quantization=_quantization(weight_types, other_types),
        int8_code_max=code_max,
    )


def _quantization(weight_types: set[str], other_types: set[str]) -> str:
    """Name the quantization from the dtypes of matrices and of vectors (norms, biases)."""
    if "int8" in weight_types:
        return "int8_float16" if "float16" in other_types else "int8"
    if weight_types:
        return sorted(weight_types)[0]
    return "unknown"
