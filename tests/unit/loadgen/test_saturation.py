"""Saturation detection during an open-loop point (``loadgen.saturation``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadgen.saturation import SaturationDetector

DT = 0.25  # the runner samples a few times a second


def feed(
    det: SaturationDetector, in_flight: list[int], sent: list[int], behind: float = 0.0
) -> str | None:
    """Samples ``DT`` apart; the first reason given, if any."""
    for i, (n, k) in enumerate(zip(in_flight, sent, strict=True)):
        reason = det.observe(i * DT, n, behind, k)
        if reason:
            return reason
    return None


def static_batcher(
    arrivals: np.ndarray, batch_s: float, max_batch: int, horizon_s: float
) -> tuple[list[int], list[int]]:
    """(in flight, sent) sampled every ``DT`` of one worker running whole batches: a batch takes
    everything queued (up to ``max_batch``) and finishes all of it ``batch_s`` later."""
    done_at = np.full(len(arrivals), math.inf)
    t, k = 0.0, 0
    while k < len(arrivals) and t < horizon_s + batch_s:
        t = max(t, arrivals[k])  # idle until the next arrival
        queued = int(np.searchsorted(arrivals, t, side="right")) - k
        take = min(queued, max_batch)
        done_at[k : k + take] = t + batch_s
        k += take
        t += batch_s
    samples = np.arange(0.0, horizon_s, DT)
    sent = np.searchsorted(arrivals, samples, side="right")
    finished = np.array([(done_at <= x).sum() for x in samples])
    return [int(v) for v in sent - finished], [int(v) for v in sent]


def test_static_batcher_sawtooth_below_capacity_is_not_saturation() -> None:
    # The review's repro: batches of 32 taking 4 s (capacity 8 req/s), 3 req/s offered,
    # saturation_s = 4: in flight rises by 12 over each batch and drops by 12 at its end.
    arrivals = np.arange(0.0, 120.0, 1 / 3.0)
    in_flight, sent = static_batcher(arrivals, 4.0, 32, 120.0)
    assert max(in_flight) - min(in_flight[40:]) >= 11  # the sawtooth the old check misread
    for window_s in (2.0, 4.0, 6.0):
        det = SaturationDetector(rate=3.0, window_s=window_s, lag_threshold_s=0.05)
        assert feed(det, in_flight, sent) is None, window_s


def test_static_batcher_with_poisson_arrivals_below_capacity_is_not_saturation() -> None:
    for seed in range(5):
        gaps = np.random.default_rng(seed).exponential(1 / 5.0, size=1000)
        arrivals = np.cumsum(gaps)
        in_flight, sent = static_batcher(arrivals, 4.0, 32, 120.0)
        det = SaturationDetector(rate=5.0, window_s=4.0, lag_threshold_s=0.05)
        assert feed(det, in_flight, sent) is None, seed


def test_static_batcher_overloaded_is_saturation() -> None:
    # 12 req/s offered to a batcher that serves 32 per 4 s (8 req/s): 4 more in flight a second.
    arrivals = np.arange(0.0, 120.0, 1 / 12.0)
    in_flight, sent = static_batcher(arrivals, 4.0, 32, 120.0)
    det = SaturationDetector(rate=12.0, window_s=4.0, lag_threshold_s=0.05)
    reason = feed(det, in_flight, sent)
    assert reason is not None and "grows without bound" in reason
    assert det.span_s == pytest.approx(8.0)  # two 4 s completion gaps


def test_in_flight_growing_at_the_excess_rate_is_saturation() -> None:
    # Offered 40/s, served 20/s: 20 more in flight every second.
    sent = [int(40 * DT * i) for i in range(60)]
    in_flight = [int(20 * DT * i) for i in range(60)]
    det = SaturationDetector(rate=40.0, window_s=5.0, lag_threshold_s=0.05)
    reason = feed(det, in_flight, sent)
    assert reason is not None and "grows without bound" in reason
    assert "served 20" in reason


def test_steady_noisy_in_flight_is_not() -> None:
    rng = np.random.default_rng(1)
    sent = [int(40 * DT * i) for i in range(200)]
    det = SaturationDetector(rate=40.0, window_s=5.0, lag_threshold_s=0.05)
    assert feed(det, list(rng.poisson(8.0, size=200)), sent) is None


def test_a_short_rise_is_not() -> None:
    # The ramp to a steady 30 in flight takes 2 s, shorter than the 5 s window.
    sent = [int(40 * DT * i) for i in range(80)]
    det = SaturationDetector(rate=40.0, window_s=5.0, lag_threshold_s=0.05)
    assert feed(det, [min(30, int(15 * DT * i)) for i in range(80)], sent) is None


def test_growth_off_ignores_a_growing_queue_but_not_lag() -> None:
    # Trace replays: a burst that outruns the service must not end the replay.
    sent = [int(40 * DT * i) for i in range(60)]
    in_flight = [int(20 * DT * i) for i in range(60)]
    det = SaturationDetector(rate=40.0, window_s=5.0, lag_threshold_s=0.05, growth=False)
    assert feed(det, in_flight, sent) is None
    det = SaturationDetector(rate=40.0, window_s=2.0, lag_threshold_s=0.05, growth=False)
    assert feed(det, in_flight, sent, behind=0.2) is not None


def test_sends_behind_schedule_for_the_window_is_saturation() -> None:
    det = SaturationDetector(rate=40.0, window_s=2.0, lag_threshold_s=0.05)
    assert feed(det, [3] * 20, list(range(20)), behind=0.04) is None
    reason = feed(SaturationDetector(40.0, 2.0, 0.05), [3] * 20, list(range(20)), behind=0.2)
    assert reason is not None and "behind schedule" in reason


def test_disabled_never_fires() -> None:
    det = SaturationDetector(rate=40.0, window_s=0.0, lag_threshold_s=0.05)
    assert feed(det, list(range(0, 400, 10)), list(range(0, 800, 20)), behind=9.0) is None
