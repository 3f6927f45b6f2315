"""Decode steps of a static batch: when each request's tokens come, and what they cost."""

from __future__ import annotations

import numpy as np
import pytest

from reports.capacity import decode_step_table, expected_max, request_steps, step_clock


def test_expected_max() -> None:
    assert expected_max(np.array([16.0, 16.0]), 4) == 16.0
    # Two equally likely lengths 1 and 3: the longer of two draws is 3 unless both are 1.
    assert expected_max(np.array([1.0, 3.0]), 2) == pytest.approx(2.5)
    assert expected_max(np.array([1.0, 3.0]), 1.5) == pytest.approx(2.25)
    assert np.isnan(expected_max(np.array([]), 2))


def test_longer_prompts_start_and_end_later_in_a_batch() -> None:
    # CTranslate2 prefills up to the shortest prompt and forces the rest one step at a time.
    first, last = request_steps([30, 45], [24, 24])
    assert first == [0, 15]
    assert last == [23, 38]
    clock = step_clock(last, 0.02, 0.01)
    # Steps 1..23 run both sequences (40 ms each), 24..38 only the longer prompt (30 ms).
    assert clock(0) == 0.0
    assert clock(15) == pytest.approx(15 * 0.04)
    assert clock(23) == pytest.approx(23 * 0.04)
    assert clock(38) == pytest.approx(23 * 0.04 + 15 * 0.03)


def test_decode_step_table() -> None:
    same = decode_step_table(np.full(10, 64), np.full(10, 16), 4)
    assert same == tuple((15.0, 15.0 * b) for b in range(1, 5))
    # Prompts of 0 or 10 tokens, one output token: two requests differ by 10 steps half the
    # time, and then only the longer one runs those steps.
    spread = decode_step_table(np.array([0, 10]), np.array([1, 1]), 2)
    assert spread[0] == (0.0, 0.0)
    assert spread[1] == pytest.approx((5.0, 5.0), abs=0.3)
