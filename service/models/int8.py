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

__all__ = ["WEIGHT_CODE_MAX", "quantize_rows", "requantize_int8_weights"]

WEIGHT_CODE_MAX: Final = 64
"""Largest weight code: 2 * 255 * 64 fits in int16, so no ``vpmaddubsw`` pair sum saturates."""


def quantize_rows(
    weight: npt.NDArray[np.float32], code_max: int = WEIGHT_CODE_MAX
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Quantize each row (or each output channel of a conv) to ``[-code_max, code_max]``.

    Returns the codes and CTranslate2's per-row scale (``w ~= code / scale``), as its own
    converter computes them with 127 in place of ``code_max``.
    """
    rows = weight.reshape(weight.shape[0], -1).astype(np.float32, copy=False)
    amax = np.amax(np.absolute(rows), axis=1)
    amax[amax == 0] = np.float32(code_max)
    # Keep the scale representable in float32 for tiny nonzero rows, as CTranslate2 does.
    amax = np.maximum(amax, np.float32(code_max) / np.finfo(np.float32).max)
    scale = (np.float32(code_max) / amax).astype(np.float32)
    codes = np.rint(rows * scale[:, None]).astype(np.int8)
    return codes.reshape(weight.shape), scale


def requantize_int8_weights(spec: Any, quantization: str, code_max: int = WEIGHT_CODE_MAX) -> int:
    """Optimize ``spec`` for ``quantization`` with weight codes bounded by ``code_max``.

    Runs CTranslate2's own ``spec.optimize`` (aliasing, float conversions, quantization), then
    requantizes every int8 weight from the float value it had before, so nothing is rounded
    twice. Returns how many weights were requantized (0 for a non-int8 quantization).
    """
    from ctranslate2.specs import model_spec

    if not quantization.startswith("int8"):  # int8, int8_float32, int8_float16, ...
        spec.optimize(quantization=quantization)
        return 0
    floats: dict[tuple[int, str], npt.NDArray[np.float32]] = {}

    def remember(layer: Any, name: str, value: Any) -> None:
        key = name.rsplit("/", 1)[-1]
        if not hasattr(layer, f"{key}_scale"):
            return
        if isinstance(value, model_spec.Variable):
            if value.dtype not in ("float32", "float16", "bfloat16"):
                return
            value = value.to("float32").numpy()
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.ndim >= 2:
            # A copy: CTranslate2 quantizes a float32 array in place.
            floats[(id(layer), key)] = np.array(value, dtype=np.float32, copy=True)

    model_spec.visit_spec(spec, remember)
    spec.optimize(quantization=quantization)
    done = 0

    def requantize(layer: Any, name: str, value: Any) -> None:
        nonlocal done
        key = name.rsplit("/", 1)[-1]
        original = floats.get((id(layer), key))
        if original is None or not isinstance(value, model_spec.Variable):
            return  # not a quantized weight, or an alias of one
        if value.dtype != "int8":
            return
        codes, scale = quantize_rows(original, code_max)
        setattr(layer, key, model_spec.NumpyVariable(codes))
        setattr(layer, f"{key}_scale", model_spec.NumpyVariable(scale))
        done += 1

    model_spec.visit_spec(spec, requantize)
    return done
