"""INT8 weights no x86 int8 GEMM saturates: weight codes bounded by 64 instead of 127.

CTranslate2 quantizes each weight row to ``rint(w * 127 / amax)`` and, on x86, multiplies
uint8 activations (int8 shifted by 128) by those int8 codes. Without VNNI, oneDNN (its GEMM
backend on AMD CPUs) does that with ``vpmaddubsw``, which adds two ``u8 * s8`` products into
a saturating int16; 2 * 255 * 127 overflows it and the sum is clipped. On a 2-core AMD EPYC
(AVX2) the default model's held-out perplexity rose 15.7 % over float32 with 127-codes and
5.9 % with 64-codes; MKL (the backend on Intel CPUs) did not saturate: 3.1 % and 5.5 %.
Codes bounded by 64 keep every pair sum within int16 (2 * 255 * 64 = 32,640), the reduced
range oneDNN and ONNX Runtime advise for these instructions, on every backend and CPU a
build may be deployed to. ``tokenbooth bench int8`` measures both bounds on both backends.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CTRANSLATE2_CODE_MAX",
    "WEIGHT_CODE_MAX",
    "is_int8",
    "quantize_rows",
    "requantize_int8_weights",
]

WEIGHT_CODE_MAX: Final = 64
"""Largest weight code: 2 * 255 * 64 fits in int16, so no ``vpmaddubsw`` pair sum saturates."""
CTRANSLATE2_CODE_MAX: Final = 127
"""Largest weight code CTranslate2's own converter writes (and the most int8 holds)."""


def is_int8(quantization: str) -> bool:
    """Whether ``quantization`` stores int8 weight codes (int8, int8_float32, int8_float16...)."""
    return quantization.startswith("int8")


def quantize_rows(
    weight: npt.NDArray[np.float32], int8_code_max: int = WEIGHT_CODE_MAX
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Quantize each row (or each output channel of a conv) to ``[-int8_code_max, int8_code_max]``.

    Returns the codes and CTranslate2's per-row scale (``w ~= code / scale``), as its own
    converter computes them with 127 in place of ``int8_code_max``.
    """
    bound = np.float32(int8_code_max)
    rows = weight.reshape(weight.shape[0], -1).astype(np.float32, copy=False)
    amax = np.amax(np.absolute(rows), axis=1)
    amax[amax == 0] = bound
    # Keep the scale representable in float32 for tiny nonzero rows, as CTranslate2 does.
    amax = np.maximum(amax, bound / np.finfo(np.float32).max)
    scale = (bound / amax).astype(np.float32)
    codes = np.rint(rows * scale[:, None]).astype(np.int8)
    return codes.reshape(weight.shape), scale


def requantize_int8_weights(
    spec: Any, quantization: str, int8_code_max: int = WEIGHT_CODE_MAX
) -> int:
    """Optimize ``spec`` for ``quantization`` as ``spec.optimize`` does, int8 codes bounded.

    Aliases equal variables first (tied weights), quantizes each remaining float weight with a
    ``*_scale`` sibling by :func:`quantize_rows`, one at a time, and leaves the rest (float
    conversions, non-int8 quantizations) to CTranslate2's own quantization pass. Returns how
    many weights were quantized here (0 for a non-int8 quantization).
    """
    from ctranslate2.specs import model_spec

    if not is_int8(quantization):
        spec.optimize(quantization=quantization)
        return 0
    # The two halves of LayerSpec.optimize, with ours in between; variable_filter is the
    # hook CTranslate2's _quantize offers for leaving variables alone.
    spec._alias_variables()
    ours: set[str] = set()

    def quantize(layer: Any, name: str, value: Any) -> None:
        key = name.rsplit("/", 1)[-1]
        if not hasattr(layer, f"{key}_scale") or not isinstance(value, model_spec.Variable):
            return  # not quantizable, or an alias (a string) of a quantized weight
        if value.is_scalar() or value.dtype not in ("float32", "float16", "bfloat16"):
            return
        codes, scale = quantize_rows(value.to("float32").numpy(), int8_code_max)
        setattr(layer, key, model_spec.NumpyVariable(codes))
        setattr(layer, f"{key}_scale", model_spec.NumpyVariable(scale))
        ours.add(name)

    model_spec.visit_spec(spec, quantize)
    # Scales stay float32, as CTranslate2 keeps them (it sets them after its conversions).
    done = ours | {f"{name}_scale" for name in ours}
    spec._quantize(quantization, variable_filter=lambda name: name not in done)
    return len(ours)
