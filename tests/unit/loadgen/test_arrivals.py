"""Arrival timing: open-loop schedules (Poisson checked statistically, constant exactly, both
seeded) and the closed loop's start ramp and think times."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from loadgen.arrivals import (
    ArrivalKind,
    arrival_offsets,
    point_offsets,
    probe_offsets,
    ramp_offsets,
    split_for_worker,
    think_times,
    warmup_start,
)
from loadgen.spec import LengthDist

RATE = 50.0
DURATION_S = 200.0
# Kolmogorov-Smirnov critical value coefficient for alpha = 0.001 (large n): D > 1.949/sqrt(n).
KS_COEF_ALPHA_0001 = 1.949


def ks_exponential(gaps: npt.NDArray[np.float64], rate: float) -> float:
    """Kolmogorov-Smirnov statistic of ``gaps`` against Exp(rate)."""
    x = np.sort(gaps)
    n = x.size
    cdf = 1.0 - np.exp(-rate * x)
    upper = np.arange(1, n + 1) / n - cdf
    lower = cdf - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


def poisson_checks(times: npt.NDArray[np.float64], rate: float, duration: float) -> list[str]:
    """Every way ``times`` fails to look like a Poisson process of ``rate`` (empty: passes)."""
    failures = []
    n = times.size
    expected = rate * duration
    # Count ~ Poisson(rate*duration): within 4 sigma.
    if abs(n - expected) > 4 * math.sqrt(expected):
        failures.append(f"count {n} vs {expected:.0f}")
    gaps = np.diff(times)
    # Mean gap: 99.99% normal CI around 1/rate.
    mean, se = gaps.mean(), gaps.std(ddof=1) / math.sqrt(gaps.size)
    if abs(mean - 1 / rate) > 4 * se:
        failures.append(f"mean gap {mean:.5f} vs {1 / rate:.5f} (se {se:.5f})")
    # Exponential gaps have coefficient of variation 1 (s.e. about 1/sqrt(n)).
    cv = gaps.std(ddof=1) / mean
    if abs(cv - 1.0) > 4 / math.sqrt(gaps.size):
        failures.append(f"coefficient of variation {cv:.3f}")
    # Counts per 1 s window: index of dispersion var/mean ~ 1, with (k-1)*D ~ chi2(k-1).
    windows = int(duration)
    counts = np.histogram(times, bins=windows, range=(0.0, float(windows)))[0]
    dispersion = counts.var(ddof=1) / counts.mean()
    if abs(dispersion - 1.0) > 4 * math.sqrt(2 / (windows - 1)):
        failures.append(f"index of dispersion {dispersion:.3f}")
    d = ks_exponential(gaps, rate)
    if d > KS_COEF_ALPHA_0001 / math.sqrt(gaps.size):
        failures.append(f"KS statistic {d:.4f} vs Exp({rate})")
    return failures


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_poisson_schedule_is_a_poisson_process(seed: int) -> None:
    times = arrival_offsets("poisson", RATE, DURATION_S, seed=seed)
    assert times[0] == 0.0
    assert np.all(np.diff(times) > 0)
    assert times[-1] < DURATION_S
    # The draw was not cut short: the last arrival is within a few mean gaps of the end.
    assert DURATION_S - times[-1] < 10 / RATE
    assert poisson_checks(times, RATE, DURATION_S) == []


def test_poisson_checks_reject_wrong_processes() -> None:
    # The statistical checks have power: a regular schedule, a wrong rate and bursty
    # (overdispersed) arrivals all fail.
    constant = arrival_offsets("constant", RATE, DURATION_S)
    assert any("variation" in f for f in poisson_checks(constant, RATE, DURATION_S))
    wrong_rate = arrival_offsets("poisson", RATE * 1.1, DURATION_S, seed=0)
    assert any("count" in f for f in poisson_checks(wrong_rate, RATE, DURATION_S))
    # A doubly stochastic process: each second's rate is 0.5x or 1.5x at random.
    rng = np.random.default_rng(0)
    seconds = [
        s + rng.uniform(0.0, 1.0, size=rng.poisson(RATE * rng.choice([0.5, 1.5])))
        for s in range(int(DURATION_S))
    ]
    bursty = np.sort(np.concatenate(seconds))
    assert any("dispersion" in f for f in poisson_checks(bursty, RATE, DURATION_S))


def test_poisson_small_rate_and_duration() -> None:
    # Few expected arrivals: still a schedule within the window, never more than drawn.
    times = arrival_offsets("poisson", 0.5, 4.0, seed=3)
    assert times.size >= 1
    assert times[0] == 0.0
    assert np.all(times < 4.0)


@pytest.mark.parametrize(
    ("rate", "duration", "expected"),
    [
        (4.0, 2.5, [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25]),
        (3.0, 1.0, [0.0, 1 / 3, 2 / 3]),
        (10.0, 0.3, [0.0, 0.1, 0.2]),
        (0.5, 5.0, [0.0, 2.0, 4.0]),
    ],
)
def test_constant_schedule_is_exactly_spaced(
    rate: float, duration: float, expected: list[float]
) -> None:
    times = arrival_offsets("constant", rate, duration)
    np.testing.assert_allclose(times, expected, rtol=0, atol=1e-12)


def test_constant_schedule_count_over_a_long_window() -> None:
    times = arrival_offsets("constant", 50.0, 200.0)
    assert times.size == 10_000
    np.testing.assert_allclose(np.diff(times), 0.02, rtol=1e-9)


def test_same_seed_same_schedule_other_seed_different() -> None:
    a = arrival_offsets("poisson", 20.0, 30.0, seed=11)
    b = arrival_offsets("poisson", 20.0, 30.0, seed=11)
    c = arrival_offsets("poisson", 20.0, 30.0, seed=12)
    np.testing.assert_array_equal(a, b)
    assert a.size != c.size or not np.array_equal(a, c)
    # The constant schedule ignores the seed.
    np.testing.assert_array_equal(
        arrival_offsets("constant", 5.0, 3.0, seed=1), arrival_offsets("constant", 5.0, 3.0, seed=2)
    )


@pytest.mark.parametrize("kind", ["poisson", "constant"])
def test_max_requests_caps_the_schedule_keeping_its_start(kind: str) -> None:
    full = arrival_offsets(kind, 20.0, 10.0, seed=5)  # type: ignore[arg-type]
    capped = arrival_offsets(kind, 20.0, 10.0, max_requests=17, seed=5)  # type: ignore[arg-type]
    assert capped.size == 17
    np.testing.assert_array_equal(capped, full[:17])
    more = arrival_offsets(kind, 20.0, 10.0, max_requests=10_000, seed=5)  # type: ignore[arg-type]
    np.testing.assert_array_equal(more, full)


@pytest.mark.parametrize("kind", ["poisson", "constant", "gamma"])
@pytest.mark.parametrize("probe", [False, True])
def test_a_point_sends_at_most_max_requests_in_its_warm_up_the_last_ones(
    kind: ArrivalKind, probe: bool
) -> None:
    """2,000 req/s with a 5 s warm-up is 10,000 warm-up sends; max_requests = 100 keeps 100."""
    rate, warmup, duration, cap = 2000.0, 5.0, 1.0, 100
    got = point_offsets(
        kind, rate, warmup, duration, max_requests=cap, seed=9, burstiness=0.5, probe=probe
    )
    full = (
        probe_offsets(kind, rate, warmup, duration, seed=9, burstiness=0.5)
        if probe
        else arrival_offsets(kind, rate, warmup + duration, seed=9, burstiness=0.5)
    )
    warm_full = full[full < warmup]
    assert warm_full.size > 50 * cap  # the uncapped warm-up this bound is for
    warm = got[got < warmup]
    assert warm.size == cap
    np.testing.assert_array_equal(warm, warm_full[-cap:])  # the last ones: warm at the window
    assert warmup - warm[-1] < 10 / rate
    # The measured part is untouched (the users stop after max_requests of it).
    np.testing.assert_array_equal(got[got >= warmup], full[full >= warmup])


def test_warmup_start_drops_only_warm_up_sends_beyond_the_budget() -> None:
    offsets = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]  # warm-up below 2.0: four sends
    assert warmup_start(offsets, 2.0, 10) == 0
    assert warmup_start(offsets, 2.0, 4) == 0
    assert warmup_start(offsets, 2.0, 3) == 1
    assert warmup_start(offsets, 2.0, 0) == 4  # no warm-up at all, the window whole
    assert warmup_start(offsets, 0.0, 1) == 0  # no warm-up to bound
    assert warmup_start([], 2.0, 1) == 0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="rate"):
        arrival_offsets("poisson", 0.0, 10.0)
    with pytest.raises(ValueError, match="rate"):
        arrival_offsets("constant", -1.0, 10.0)
    with pytest.raises(ValueError, match="unknown arrival kind"):
        arrival_offsets("bursty", 1.0, 10.0)  # type: ignore[arg-type]
    assert arrival_offsets("poisson", 5.0, 0.0).size == 0


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_split_for_worker_partitions_exactly(workers: int) -> None:
    offsets = arrival_offsets("poisson", 30.0, 20.0, seed=2)
    parts = [split_for_worker(offsets, i, workers) for i in range(workers)]
    merged = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(merged, offsets)  # nothing lost, nothing duplicated
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == offsets.size
    for p in parts:
        assert np.all(np.diff(p) > 0)  # each worker's share stays in schedule order
    # Each worker carries about 1/workers of the rate over the whole window.
    for p in parts:
        assert p[0] < 1.0
        assert p[-1] > 19.0


def test_split_for_one_worker_is_the_whole_schedule() -> None:
    offsets = arrival_offsets("constant", 4.0, 2.0)
    np.testing.assert_array_equal(split_for_worker(offsets, 0, 1), offsets)
    np.testing.assert_array_equal(split_for_worker(offsets, 0, 0), offsets)


# ------------------------------------------------------------------------------ closed loop


def test_ramp_spreads_users_evenly_from_zero() -> None:
    offsets = ramp_offsets(8, 0.8)
    np.testing.assert_allclose(offsets, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    # Every pair ramp/N apart: no two users share a batch by the start alone.
    assert np.diff(offsets).min() == pytest.approx(0.8 / 8)


def test_zero_ramp_is_the_lockstep_start() -> None:
    np.testing.assert_array_equal(ramp_offsets(4, 0.0), np.zeros(4))
    assert ramp_offsets(0, 1.0).size == 0
    with pytest.raises(ValueError, match="ramp_s"):
        ramp_offsets(4, -1.0)


def test_think_times_follow_their_distribution() -> None:
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(think_times(None, 3, rng), np.zeros(3))
    fixed = LengthDist(dist="fixed", value=0.25, min=0.25, max=0.25)
    np.testing.assert_array_equal(think_times(fixed, 3, rng), np.full(3, 0.25))
    uniform = think_times(LengthDist(dist="uniform", min=0.01, max=0.05), 20000, rng)
    assert uniform.min() >= 0.01 and uniform.max() <= 0.05
    assert uniform.mean() == pytest.approx(0.03, abs=0.001)
    # Fractions of a second survive (token lengths are rounded, think times are not).
    assert len(np.unique(uniform)) > 19000
    normal = think_times(
        LengthDist(dist="normal", mean=0.1, std=0.05, min=0.05, max=0.2), 20000, rng
    )
    assert normal.min() == 0.05 and normal.max() == 0.2  # clipped to [min, max]


def test_level_seed_is_shared_by_configurations_and_differs_per_level_and_repeat() -> None:
    from loadgen.arrivals import level_seed

    assert level_seed(42, "rate=1/poisson", 0) == level_seed(42, "rate=1/poisson", 0)
    seeds = {level_seed(42, k, r) for k in ("rate=1/poisson", "rate=2/poisson") for r in (0, 1)}
    assert len(seeds) == 4
