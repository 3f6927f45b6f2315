"""Gamma arrivals (vLLM's ``--burstiness``): mean gap 1/rate, CV 1/sqrt(burstiness), Poisson at 1,
seeded; and the ``[load] arrival``/``burstiness`` keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from loadgen.arrivals import arrival_offsets, unit_arrivals
from loadgen.spec import SpecError, parse_spec

RATE = 20.0
N = 20_000
DURATION_S = N / RATE
Z = 4.0  # 4 sigma: a correct generator fails one check in ~16000


def gaps_of(burstiness: float, seed: int = 1) -> np.ndarray:
    times = arrival_offsets("gamma", RATE, DURATION_S, seed=seed, burstiness=burstiness)
    return np.diff(times)


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 1.0, 2.0, 8.0])
def test_gamma_gaps_have_mean_one_over_rate_and_cv_one_over_sqrt_burstiness(
    burstiness: float,
) -> None:
    g = gaps_of(burstiness)
    n = g.size
    assert abs(n - N) < Z * math.sqrt(N / burstiness) + 2  # count of a renewal process
    k, mean = burstiness, 1 / RATE
    # Mean of n Gamma(k, mean/k) gaps: standard error mean / sqrt(k n).
    assert abs(g.mean() - mean) < Z * mean / math.sqrt(k * n)
    # Sample CV's standard error (delta method): var ≈ c²/n (c² - c γ1 + (γ2 + 2)/4), with a
    # gamma's c = 1/√k, skewness γ1 = 2/√k, excess kurtosis γ2 = 6/k: c² (1/2 + 1/(2k)) / n.
    cv = 1 / math.sqrt(k)
    se_cv = cv * math.sqrt((0.5 + 0.5 / k) / n)
    assert abs(g.std(ddof=1) / g.mean() - cv) < Z * se_cv, (g.std() / g.mean(), cv)


def test_gamma_matches_the_gamma_distribution_ks() -> None:
    for k in (0.5, 3.0):
        g = gaps_of(k, seed=7)
        d, p = stats.kstest(g, "gamma", args=(k, 0, 1 / (RATE * k)))
        assert p > 1e-3, (k, d, p)


def test_burstiness_one_is_poisson() -> None:
    g = gaps_of(1.0, seed=3)
    _, p = stats.kstest(g, "expon", args=(0, 1 / RATE))
    assert p > 1e-3
    # Counts per 1 s window of a Poisson process: dispersion (variance / mean) near 1.
    times = np.cumsum(g)
    counts = np.bincount(times.astype(int))[:-1]
    dispersion = counts.var(ddof=1) / counts.mean()
    assert abs(dispersion - 1) < Z * math.sqrt(2 / counts.size)


def test_burstier_arrivals_are_overdispersed_and_regular_ones_underdispersed() -> None:
    def dispersion(k: float) -> float:
        times = arrival_offsets("gamma", RATE, DURATION_S, seed=5, burstiness=k)
        counts = np.bincount(times.astype(int))[:-1]
        return float(counts.var(ddof=1) / counts.mean())

    # A renewal process's counts have dispersion -> cv^2 = 1/k over long windows.
    assert dispersion(0.25) > 2.5
    assert dispersion(4.0) < 0.5


def test_gamma_schedule_is_seeded_and_starts_at_zero() -> None:
    a = arrival_offsets("gamma", RATE, 10.0, seed=11, burstiness=0.5)
    b = arrival_offsets("gamma", RATE, 10.0, seed=11, burstiness=0.5)
    c = arrival_offsets("gamma", RATE, 10.0, seed=12, burstiness=0.5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a[0] == 0.0 and a[-1] < 10.0 and np.all(np.diff(a) >= 0)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_unit_arrivals_reject_bad_burstiness(bad: float) -> None:
    with pytest.raises(ValueError, match="burstiness"):
        unit_arrivals("gamma", 100.0, burstiness=bad)


def test_spec_takes_gamma_and_burstiness() -> None:
    spec = parse_spec('[load]\nmode = "rate"\nrate = [2]\narrival = "gamma"\nburstiness = 0.5\n')
    assert spec.load.arrival == "gamma" and spec.load.burstiness == 0.5
    assert spec.levels()[0].key == "rate=2/gamma"


@pytest.mark.parametrize("value", ["0", "-0.5", '"high"', "true", "inf"])
def test_spec_rejects_bad_burstiness_naming_the_key_and_line(value: str) -> None:
    text = f'[load]\nmode = "rate"\narrival = "gamma"\nburstiness = {value}\n'
    with pytest.raises(SpecError, match=r"<spec>:4: \[load\] burstiness"):
        parse_spec(text)
