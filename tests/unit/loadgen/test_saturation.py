"""Saturation detection during an open-loop point (``loadgen.saturation``)."""

from __future__ import annotations

import numpy as np

from loadgen.saturation import SaturationDetector


def feed(det: SaturationDetector, in_flight: list[int], behind: float = 0.0) -> str | None:
    """Samples 0.25 s apart; the first reason given, if any."""
    for i, n in enumerate(in_flight):
        reason = det.observe(i * 0.25, n, behind)
        if reason:
            return reason
    return None


def test_in_flight_growing_at_the_excess_rate_is_saturation() -> None:
    # Offered 40/s, served 20/s: 20 more in flight every second.
    det = SaturationDetector(rate=40.0, window_s=5.0, lag_threshold_s=0.05)
    reason = feed(det, [int(20 * 0.25 * i) for i in range(40)])
    assert reason is not None and "grows without bound" in reason


def test_steady_noisy_in_flight_is_not() -> None:
    rng = np.random.default_rng(1)
    det = SaturationDetector(rate=40.0, window_s=5.0, lag_threshold_s=0.05)
    assert feed(det, list(rng.poisson(8.0, size=200))) is None


def test_a_short_rise_is_not() -> None:
    # The ramp to a steady 30 in flight takes 2 s, shorter than the 5 s window.
    det = SaturationDetector(rate=40.0, window_s=5.0, lag_threshold_s=0.05)
    assert feed(det, [min(30, int(15 * 0.25 * i)) for i in range(80)]) is None


def test_sends_behind_schedule_for_the_window_is_saturation() -> None:
    det = SaturationDetector(rate=40.0, window_s=2.0, lag_threshold_s=0.05)
    assert feed(det, [3] * 20, behind=0.04) is None
    reason = feed(SaturationDetector(40.0, 2.0, 0.05), [3] * 20, behind=0.2)
    assert reason is not None and "behind schedule" in reason


def test_disabled_never_fires() -> None:
    det = SaturationDetector(rate=40.0, window_s=0.0, lag_threshold_s=0.05)
    assert feed(det, list(range(0, 400, 10)), behind=9.0) is None
