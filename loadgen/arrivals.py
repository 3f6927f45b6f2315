"""Open-loop arrival schedules and schedule-lag accounting.

Arrivals are global (one schedule for the whole load generator, split across workers), not
per-user pacing: a request is due at its scheduled time however slow earlier ones were, and
the difference between when it was due and when it was actually sent is its schedule lag.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["arrival_offsets", "split_for_worker"]


def arrival_offsets(
    kind: Literal["poisson", "constant"],
    rate: float,
    duration_s: float,
    *,
    max_requests: int | None = None,
    seed: int = 0,
) -> npt.NDArray[np.float64]:
    """Send times (seconds from the start) of every request within ``duration_s``.

    ``constant``: evenly spaced, ``1/rate`` apart, the first at 0. ``poisson``: exponential
    inter-arrival gaps with mean ``1/rate`` (a Poisson process), seeded and reproducible.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if duration_s <= 0:
        return np.zeros(0)
    expected = rate * duration_s
    if kind == "constant":
        times = np.arange(int(np.ceil(expected)), dtype=np.float64) / rate
    elif kind == "poisson":
        rng = np.random.default_rng(seed)
        # Draw enough gaps to pass duration_s with overwhelming probability, then trim.
        n = int(expected + 10 * np.sqrt(expected) + 20)
        gaps = rng.exponential(1.0 / rate, size=n)
        times = np.cumsum(gaps) - gaps[0]  # first request at t=0, like the constant schedule
    else:
        raise ValueError(f"unknown arrival kind {kind!r}")
    times = times[times < duration_s]
    if max_requests is not None:
        times = times[:max_requests]
    return times


def split_for_worker(
    offsets: npt.NDArray[np.float64], worker_index: int, workers: int
) -> npt.NDArray[np.float64]:
    """The arrivals one of ``workers`` load-generator processes sends (round-robin split)."""
    if workers <= 1:
        return offsets
    return offsets[worker_index::workers]
