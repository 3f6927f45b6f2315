"""Arrival timing: open-loop schedules (constant, Poisson, gamma), closed-loop ramp and think.

Open-loop arrivals are global (one schedule for the whole load generator, split across
workers), not per-user pacing: a request is due at its scheduled time however slow earlier ones
were, and the difference between when it was due and when it was actually sent is its schedule
lag.

Closed-loop users are de-synchronised at the start: users that all send at once ride the same
batch, finish together and send again together, so every batch is full and nobody ever waits a
batch, and the result depends on the start phase rather than on the server. :func:`ramp_offsets`
spreads the first sends; :func:`think_times` draws the optional pause between a response and
the next send, which keeps batch boundaries from lining the users up again.
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np
import numpy.typing as npt

from loadgen.spec import LengthDist

__all__ = [
    "ArrivalKind",
    "arrival_offsets",
    "level_seed",
    "point_offsets",
    "probe_offsets",
    "ramp_offsets",
    "split_for_worker",
    "think_times",
    "unit_arrivals",
    "warmup_start",
]


ArrivalKind = Literal["poisson", "constant", "gamma"]


def unit_arrivals(
    kind: ArrivalKind, horizon: float, *, burstiness: float = 1.0, seed: int = 0
) -> npt.NDArray[np.float64]:
    """Arrival times of a rate-1 process below ``horizon``, the first at 0.

    ``constant``: 0, 1, 2, ... ``poisson``: Exp(1) gaps. ``gamma``: Gamma(shape = burstiness,
    scale = 1 / burstiness) gaps (vLLM's ``--burstiness``): mean 1, coefficient of variation
    ``1 / sqrt(burstiness)``; 1 is Poisson, below 1 burstier, above 1 more regular. Scaled by
    ``1 / rate`` this is a fixed-rate schedule; through a time change it follows a profile.
    """
    if not burstiness > 0 or not np.isfinite(burstiness):
        raise ValueError("burstiness must be a finite number > 0")
    if horizon <= 0:
        return np.zeros(0)
    if kind == "constant":
        return np.arange(int(np.ceil(horizon)), dtype=np.float64)
    rng = np.random.default_rng(seed)
    # Enough gaps to pass the horizon with overwhelming probability (the gaps' variance is
    # 1/burstiness), then trim.
    n = int(horizon + 10 * np.sqrt(horizon / burstiness) + 20)
    if kind == "poisson":
        gaps = rng.exponential(1.0, size=n)
    elif kind == "gamma":
        gaps = rng.gamma(burstiness, 1.0 / burstiness, size=n)
    else:
        raise ValueError(f"unknown arrival kind {kind!r}")
    times = np.cumsum(gaps) - gaps[0]  # first request at t=0, like the constant schedule
    out: npt.NDArray[np.float64] = times[times < horizon]
    return out


def arrival_offsets(
    kind: ArrivalKind,
    rate: float,
    duration_s: float,
    *,
    max_requests: int | None = None,
    seed: int = 0,
    burstiness: float = 1.0,
) -> npt.NDArray[np.float64]:
    """Send times (seconds from the start) of every request within ``duration_s``.

    ``constant``: evenly spaced, ``1/rate`` apart, the first at 0. ``poisson``: exponential
    inter-arrival gaps with mean ``1/rate`` (a Poisson process). ``gamma``: Gamma gaps with mean
    ``1/rate`` and shape ``burstiness`` (see :func:`unit_arrivals`). Seeded and reproducible.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if duration_s <= 0:
        return np.zeros(0)
    unit = unit_arrivals(kind, rate * duration_s, burstiness=burstiness, seed=seed)
    times = unit / rate
    times = times[times < duration_s]
    if max_requests is not None:
        times = times[:max_requests]
    return times


def probe_offsets(
    kind: ArrivalKind,
    rate: float,
    warmup_s: float,
    duration_s: float,
    *,
    seed: int,
    burstiness: float = 1.0,
) -> npt.NDArray[np.float64]:
    """Send times of one SLO-search probe: the measured window carries the rate-1 sequence
    ``seed`` scaled by ``1 / rate``, the warm-up an independent one before it.

    Every probe of a search shares ``seed``, so its measured sends at rate ``r`` are the first
    ``N(r * duration_s)`` of one sequence: the realised load is monotonic in ``rate``, and two
    probes differ only in rate, not in the luck of their draws.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if duration_s <= 0:
        return np.zeros(0)
    warm = unit_arrivals(kind, rate * warmup_s, burstiness=burstiness, seed=seed + 1) / rate
    unit = unit_arrivals(kind, rate * duration_s, burstiness=burstiness, seed=seed)
    return np.concatenate([warm[warm < warmup_s], warmup_s + unit / rate])


def warmup_start(offsets: npt.ArrayLike, warmup_s: float, max_requests: int) -> int:
    """Index of the first send a point keeps: all but the last ``max_requests`` of the sends
    due before ``warmup_s`` are dropped (``offsets`` sorted, seconds from the point's start).

    ``[run] max_requests`` bounds what a point sends, warm-up included, not only the measured
    window. The warm-up sends kept are the last ones, so the warm-up still ends right before the
    window and the target is warm when measuring starts.
    """
    times = np.asarray(offsets, dtype=np.float64)
    warm = int(np.searchsorted(times, warmup_s, side="left"))
    return max(0, warm - max(max_requests, 0))


def point_offsets(
    kind: ArrivalKind,
    rate: float,
    warmup_s: float,
    duration_s: float,
    *,
    max_requests: int,
    seed: int,
    burstiness: float = 1.0,
    probe: bool = False,
) -> npt.NDArray[np.float64]:
    """Send times of one open-loop point at ``rate``: its warm-up, then its measured window.

    One arrival sequence over ``warmup_s + duration_s`` (:func:`arrival_offsets`), or with
    ``probe`` an SLO-search probe's (:func:`probe_offsets`). At most ``max_requests`` of the
    sends fall in the warm-up (:func:`warmup_start`); the measured ones are all kept, and the
    users stop after ``max_requests`` of them.
    """
    if probe:
        times = probe_offsets(kind, rate, warmup_s, duration_s, seed=seed, burstiness=burstiness)
    else:
        times = arrival_offsets(kind, rate, warmup_s + duration_s, seed=seed, burstiness=burstiness)
    return times[warmup_start(times, warmup_s, max_requests) :]


def split_for_worker(
    offsets: npt.NDArray[np.float64], worker_index: int, workers: int
) -> npt.NDArray[np.float64]:
    """The arrivals one of ``workers`` load-generator processes sends (round-robin split)."""
    if workers <= 1:
        return offsets
    return offsets[worker_index::workers]


def ramp_offsets(users: int, ramp_s: float) -> npt.NDArray[np.float64]:
    """First-send offsets (seconds) of ``users`` closed-loop users spread over ``ramp_s``.

    User ``i`` of ``N`` starts at ``i / N * ramp_s``: evenly spaced, not drawn at random.
    Random uniform starts leave clumps (the closest two of N are about ``ramp_s / N**2``
    apart), which is the synchrony the ramp is there to remove; even spacing keeps every pair
    ``ramp_s / N`` apart and is the same on every run. No random phase: the ramp's origin (the
    end of the warm-up probe, or the point's start) is arbitrary already. ``ramp_s = 0`` starts
    everyone at once (lockstep, as before the ramp existed).
    """
    if users < 0:
        raise ValueError("users must be >= 0")
    if ramp_s < 0:
        raise ValueError("ramp_s must be >= 0")
    return np.arange(users, dtype=np.float64) * (ramp_s / users) if users else np.zeros(0)


def think_times(
    dist: LengthDist | None, n: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """``n`` think times (seconds) from ``dist``, clipped to its [min, max]; zeros for ``None``.

    The same shapes as token lengths (:class:`loadgen.spec.LengthDist`) without rounding.
    """
    if dist is None:
        return np.zeros(n)
    if dist.dist == "fixed":
        return np.full(n, float(dist.value))
    if dist.dist == "uniform":
        return rng.uniform(dist.min, dist.max, size=n)
    return np.clip(rng.normal(dist.mean, dist.std, size=n), dist.min, dist.max)


def level_seed(seed: int, level_key: str, repeat: int) -> int:
    """The arrival seed of one load level's repeat, the same for every server configuration.

    Configurations compared at one level then face the same send times (common random
    numbers): a difference between them is theirs, not a luckier Poisson draw.
    """
    return seed + zlib.crc32(f"{level_key}|{repeat}".encode()) % 65_536
