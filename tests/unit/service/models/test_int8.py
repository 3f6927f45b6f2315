"""service.models.int8: INT8 weight codes bounded so no x86 int8 GEMM saturates."""

from __future__ import annotations

import numpy as np
import pytest
from ctranslate2.specs import common_spec, model_spec

from service.models.int8 import WEIGHT_CODE_MAX, quantize_rows, requantize_int8_weights


class _TwoLinears(model_spec.LayerSpec):  # type: ignore[misc]
    """A parent spec with two linear layers, as a decoder holds many."""

    def __init__(self) -> None:
        self.first = common_spec.LinearSpec()
        self.second = common_spec.LinearSpec()


class _Conv(model_spec.LayerSpec):  # type: ignore[misc]
    """A parent spec with one 1-D convolution."""

    def __init__(self) -> None:
        self.conv = common_spec.Conv1DSpec()


def _weights(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((6, 32)).astype(np.float32)
    weight[1] = 0.0  # an all-zero row
    weight[2, 3] = 40.0  # an outlier sets its row's scale
    return weight


def _pair(first: np.ndarray, second: np.ndarray) -> _TwoLinears:
    spec = _TwoLinears()
    spec.first.weight = first
    spec.second.weight = second
    spec.validate()
    return spec


def test_codes_are_bounded_and_each_row_uses_the_range() -> None:
    weight = _weights()
    codes, scale = quantize_rows(weight)
    assert codes.dtype == np.int8 and scale.dtype == np.float32
    assert int(np.abs(codes.astype(np.int16)).max()) == WEIGHT_CODE_MAX
    nonzero = np.abs(weight).max(axis=1) > 0
    assert (np.abs(codes[nonzero].astype(np.int16)).max(axis=1) == WEIGHT_CODE_MAX).all()
    assert not codes[1].any() and np.isfinite(scale).all()
    # Round to nearest: each weight is within half a step of its code.
    error = np.abs(weight - codes / scale[:, None])
    assert (error <= 0.5 / scale[:, None] + 1e-6).all()


def test_code_max_127_reproduces_ctranslate2s_own_quantization() -> None:
    ours = _pair(_weights(1), _weights(2))
    theirs = _pair(_weights(1), _weights(2))
    assert requantize_int8_weights(ours, "int8", int8_code_max=127) == 2
    theirs.optimize(quantization="int8")
    for name in ("first", "second"):
        mine, reference = getattr(ours, name), getattr(theirs, name)
        np.testing.assert_array_equal(mine.weight.numpy(), reference.weight.numpy())
        np.testing.assert_allclose(mine.weight_scale.numpy(), reference.weight_scale.numpy())


@pytest.mark.parametrize("quantization", ["int8", "int8_float16", "int8_float32"])
def test_int8_quantizations_get_bounded_codes(quantization: str) -> None:
    weight = _weights(3)
    codes, scale = quantize_rows(weight)  # before: CTranslate2 scales float32 arrays in place
    spec = _pair(weight, _weights(4))
    assert requantize_int8_weights(spec, quantization) == 2
    np.testing.assert_array_equal(spec.first.weight.numpy(), codes)
    np.testing.assert_array_equal(spec.first.weight_scale.numpy(), scale)
    assert spec.first.weight_scale.dtype == "float32"  # as CTranslate2 keeps scales


def test_other_quantizations_are_ctranslate2s() -> None:
    spec = _pair(_weights(5), _weights(6))
    assert requantize_int8_weights(spec, "float16") == 0
    assert spec.first.weight.dtype == "float16"


def test_a_tied_weight_is_quantized_once_and_stays_an_alias() -> None:
    weight = _weights(7)
    spec = _pair(weight, weight.copy())  # equal values: CTranslate2 aliases the second
    assert requantize_int8_weights(spec, "int8") == 1
    assert isinstance(spec.second.weight, str)
    assert int(np.abs(spec.first.weight.numpy().astype(np.int16)).max()) == WEIGHT_CODE_MAX


def test_a_conv_weight_is_bounded_per_output_channel() -> None:
    """Whisper-style Conv1D weights are (out, in, width): one scale per output channel."""
    rng = np.random.default_rng(8)
    weight = rng.standard_normal((4, 3, 5)).astype(np.float32)
    codes, scale = quantize_rows(weight)  # before: CTranslate2 scales in place
    spec = _Conv()
    spec.conv.weight = weight
    spec.validate()
    assert requantize_int8_weights(spec, "int8") == 1
    stored = spec.conv.weight.numpy()
    assert stored.shape == (4, 3, 5) and stored.dtype == np.int8
    np.testing.assert_array_equal(stored, codes)
    np.testing.assert_array_equal(spec.conv.weight_scale.numpy(), scale)
    assert int(np.abs(stored.astype(np.int16)).max()) == WEIGHT_CODE_MAX
