"""Point statistics, validity, knees and SLO capacity, computed from raw request rows.

Percentiles are exact (numpy's linear interpolation between order statistics of every sample),
never re-read from rounded summaries. Each percentile comes with its sample count and a seeded
bootstrap confidence interval. Capacity figures use valid points only; invalid points keep their
row and say why they were excluded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from loadgen.results import Col, Point, Srv
from reports.load import Rpt, Run, Slo
from telemetry import names

__all__ = [
    "CAPACITY_INTERPOLATION",
    "KNEE_METHOD",
    "Analysis",
    "Capacity",
    "Knee",
    "analyze",
    "bootstrap_quantile_ci",
    "bootstrap_quantile_draws",
    "find_knee",
    "percentile",
    "point_validity",
    "server_means",
    "slo_capacity",
    "slo_check",
    "summarize_requests",
]

KNEE_MIN_GAIN: Final = 0.2
"""Smallest Kneedle difference (normalised throughput minus normalised latency) called a knee."""

KNEE_METHOD: Final = (
    "Kneedle (Satopää et al., 2011): achieved requests/s and TTFT p95 of the valid points, in "
    "load order, are min-max normalised to [0, 1]; the knee is the point maximising normalised "
    f"throughput minus normalised TTFT p95, reported when that difference is at least "
    f"{KNEE_MIN_GAIN:g} and the point is not the last one measured."
)
CAPACITY_INTERPOLATION: Final = (
    "Linear interpolation between the last passing and the first failing measured load level "
    "(in load order), of each violated SLO metric against achieved requests/s and against the "
    "load level; the binding metric is the one crossing its limit first. Open-loop concurrency "
    "is the mean number of requests in flight by Little's law (achieved requests/s x mean E2E)."
)
BOOTSTRAP_RESAMPLES: Final = 1000
MOSTLY_ERRORS: Final = 0.5
"""A point where more than this fraction failed measures the failure, not the service."""
THROUGHPUT_WINDOWS: Final = 10

FloatArray = npt.NDArray[np.float64]


# ------------------------------------------------------------------------------ percentiles


def percentile(values: Sequence[float] | FloatArray, q: float) -> float:
    """Exact percentile of the samples (numpy linear interpolation); NaN when empty.

    Args:
        values: Samples; NaNs are dropped.
        q: Quantile in [0, 1].

    Returns:
        The ``q`` quantile.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan
    return float(np.quantile(x, q))


def bootstrap_quantile_draws(
    values: Sequence[float] | FloatArray,
    q: float,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> FloatArray:
    """Bootstrap distribution of a quantile, in O(resamples) time.

    A resample with replacement draws indices ``ceil(n U)`` with ``U`` uniform, so the k-th
    smallest resampled value is ``x_(ceil(n U_(k)))`` and ``U_(k) ~ Beta(k, n - k + 1)``; the
    next order statistic is ``U_(k) + (1 - U_(k)) Beta(1, n - k)``. Drawing those two directly
    gives the same distribution as resampling all ``n`` values and taking numpy's linearly
    interpolated quantile, without the n x resamples work, so it stays fast for tens of
    thousands of inter-token gaps.

    Args:
        values: Samples; NaNs are dropped.
        q: Quantile in [0, 1].
        n_resamples: Bootstrap resamples.
        seed: Seed of the generator (the same inputs give the same draws).

    Returns:
        ``n_resamples`` bootstrap estimates; empty without samples.
    """
    x = np.asarray(values, dtype=float)
    x = np.sort(x[np.isfinite(x)])
    n = x.size
    if n == 0 or n_resamples <= 0:
        return np.empty(0)
    if n == 1:
        return np.full(n_resamples, x[0])
    rng = np.random.default_rng(seed)
    h = (n - 1) * q
    k0 = min(math.floor(h), n - 1)
    frac = h - k0
    k = k0 + 1  # 1-based rank of the lower order statistic
    u_k = rng.beta(k, n - k + 1, size=n_resamples)
    lower = np.clip(np.ceil(n * u_k).astype(int) - 1, 0, n - 1)
    est: FloatArray = x[lower]
    if frac > 0 and k < n:
        u_k1 = u_k + (1.0 - u_k) * rng.beta(1, n - k, size=n_resamples)
        upper = np.clip(np.ceil(n * u_k1).astype(int) - 1, 0, n - 1)
        est = est + frac * (x[upper] - est)
    return est


def bootstrap_quantile_ci(
    values: Sequence[float] | FloatArray,
    q: float,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of a quantile (:func:`bootstrap_quantile_draws`).

    Args:
        values: Samples; NaNs are dropped.
        q: Quantile in [0, 1].
        n_resamples: Bootstrap resamples.
        level: Confidence level.
        seed: Seed of the generator (the same inputs give the same interval).

    Returns:
        ``(low, high)``; NaNs when there are no samples.
    """
    est = bootstrap_quantile_draws(values, q, n_resamples=n_resamples, seed=seed)
    if est.size == 0:
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(est, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def _finite(series: Any) -> FloatArray:
    arr: FloatArray = np.asarray(pd.to_numeric(series, errors="coerce"), dtype=float)
    out: FloatArray = arr[np.isfinite(arr)]
    return out


def _gaps(series: Any) -> FloatArray:
    parts = [np.asarray(v, dtype=float) for v in series if v is not None and len(v)]
    if not parts:
        return np.empty(0)
    arr: FloatArray = np.concatenate(parts)
    out: FloatArray = arr[np.isfinite(arr)]
    return out


def _rate_se(finished: FloatArray, duration: float) -> float:
    """Standard error of the achieved rate by batch means over equal time windows."""
    if finished.size < 5 * THROUGHPUT_WINDOWS or not duration > 0:
        return math.nan
    t0, t1 = float(finished.min()), float(finished.max())
    if t1 <= t0:
        return math.nan
    counts, _ = np.histogram(finished, bins=THROUGHPUT_WINDOWS, range=(t0, t1))
    rates = counts / ((t1 - t0) / THROUGHPUT_WINDOWS)
    return float(np.std(rates, ddof=1) / math.sqrt(THROUGHPUT_WINDOWS))


def summarize_requests(
    requests: pd.DataFrame,
    duration_s: float,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Exact latency percentiles, bootstrap CIs, counts and throughput of some request rows.

    Args:
        requests: Rows with the :class:`loadgen.results.Col` columns.
        duration_s: The measured window they came from (the denominator of every rate); NaN
            uses the span of their finish times.
        n_resamples: Bootstrap resamples per confidence interval.
        seed: Bootstrap seed.

    Returns:
        Values keyed by :class:`loadgen.results.Point` and :class:`reports.load.Rpt` columns.
    """
    ok_mask = requests[Col.OK].fillna(False).astype(bool).to_numpy()
    ok = requests[ok_mask]
    n_req = len(requests)
    n_ok = int(ok_mask.sum())
    finished = _finite(ok[Col.FINISHED_AT])
    if not (duration_s > 0) and finished.size > 1:
        duration_s = float(finished.max() - finished.min())
    dur = duration_s if duration_s > 0 else math.nan

    ttft = _finite(ok[Col.TTFT_S])
    itl = _gaps(ok[Col.ITL_S])
    tpot = _finite(ok[Col.TPOT_S])
    e2e = _finite(ok[Col.E2E_S])
    lag = _finite(requests[Col.SCHEDULE_LAG_S])
    tokens = _finite(ok[Col.COMPLETION_TOKENS])
    prompt = _finite(ok[Col.PROMPT_TOKENS])

    def ci(x: FloatArray) -> tuple[float, float]:
        return bootstrap_quantile_ci(x, 0.95, n_resamples=n_resamples, seed=seed)

    out: dict[str, Any] = {
        Point.N_REQUESTS: n_req,
        Point.N_OK: n_ok,
        Point.N_ERRORS: n_req - n_ok,
        Point.ERROR_RATE: (n_req - n_ok) / n_req if n_req else math.nan,
        Point.DURATION_S: dur,
        Point.ACHIEVED_RPS: n_ok / dur,
        Rpt.ACHIEVED_RPS_SE: _rate_se(finished, dur),
        Point.OUTPUT_TOKENS_PER_S: float(tokens.sum()) / dur,
        Point.INPUT_TOKENS_PER_S: float(prompt.sum()) / dur,
        Rpt.N_TTFT: ttft.size,
        Point.TTFT_P50_S: percentile(ttft, 0.50),
        Point.TTFT_P90_S: percentile(ttft, 0.90),
        Point.TTFT_P95_S: percentile(ttft, 0.95),
        Point.TTFT_P99_S: percentile(ttft, 0.99),
        Rpt.TTFT_MEAN_S: float(ttft.mean()) if ttft.size else math.nan,
        Point.TTFT_SCHED_P95_S: percentile(_finite(ok[Col.TTFT_FROM_SCHEDULE_S]), 0.95),
        Rpt.N_ITL: itl.size,
        Point.ITL_P50_S: percentile(itl, 0.50),
        Point.ITL_P95_S: percentile(itl, 0.95),
        Point.ITL_P99_S: percentile(itl, 0.99),
        Rpt.N_TPOT: tpot.size,
        Point.TPOT_P50_S: percentile(tpot, 0.50),
        Point.TPOT_P95_S: percentile(tpot, 0.95),
        Rpt.N_E2E: e2e.size,
        Point.E2E_P50_S: percentile(e2e, 0.50),
        Point.E2E_P95_S: percentile(e2e, 0.95),
        Point.E2E_P99_S: percentile(e2e, 0.99),
        Rpt.E2E_MEAN_S: float(e2e.mean()) if e2e.size else math.nan,
        Point.E2E_SCHED_P95_S: percentile(_finite(ok[Col.E2E_FROM_SCHEDULE_S]), 0.95),
        Point.LAG_P95_S: percentile(lag, 0.95),
        Point.LAG_MAX_S: float(lag.max()) if lag.size else math.nan,
        Rpt.COMPLETION_TOKENS_MEAN: float(tokens.mean()) if tokens.size else math.nan,
    }
    per_user = (
        _finite(ok[Col.COMPLETION_TOKENS] / ok[Col.E2E_S].where(ok[Col.E2E_S] > 0))
        if n_ok
        else np.empty(0)
    )
    out[Point.PER_USER_TOKENS_PER_S] = float(np.median(per_user)) if per_user.size else math.nan
    out[Rpt.IN_FLIGHT_MEAN] = out[Point.ACHIEVED_RPS] * out[Rpt.E2E_MEAN_S]
    out[Rpt.TTFT_P95_LO], out[Rpt.TTFT_P95_HI] = ci(ttft)
    out[Rpt.ITL_P95_LO], out[Rpt.ITL_P95_HI] = ci(itl)
    out[Rpt.TPOT_P95_LO], out[Rpt.TPOT_P95_HI] = ci(tpot)
    out[Rpt.E2E_P95_LO], out[Rpt.E2E_P95_HI] = ci(e2e)
    return out


# ------------------------------------------------------------------------------ server deltas

# (points.csv column, histogram or counter sample name, statistic)
_SERVER_MEANS: Final[tuple[tuple[str, str], ...]] = (
    (Point.SERVER_TTFT_MEAN_S, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN),
    (Point.SERVER_QUEUE_WAIT_MEAN_S, names.TOKENBOOTH_QUEUE_WAIT),
    (Point.SERVER_BATCH_FORMATION_MEAN_S, names.TOKENBOOTH_BATCH_FORMATION_DELAY),
    (Point.SERVER_PREFILL_MEAN_S, names.TOKENBOOTH_BATCH_PREFILL),
    (Point.SERVER_DECODE_MEAN_S, names.TOKENBOOTH_BATCH_DECODE),
    (Point.SERVER_BATCH_SIZE_MEAN, names.TOKENBOOTH_BATCH_SIZE),
    (Point.SERVER_BATCH_FILL_MEAN, names.TOKENBOOTH_BATCH_FILL_RATIO),
)
SERVER_MEAN_COLUMNS: Final[tuple[str, ...]] = tuple(c for c, _ in _SERVER_MEANS)
GPU_MEMORY_COLUMN: Final = "gpu_memory_used_bytes"


def server_means(server: pd.DataFrame, point_ids: Iterable[int]) -> dict[str, float]:
    """Means of the server histograms over some points, from the scraped ``_sum``/``_count`` deltas.

    Deltas of every replica are added before dividing, so a mean over several replicas weighs
    each batch (or request) once.

    Args:
        server: Server metric deltas (:class:`loadgen.results.Srv` columns).
        point_ids: Points to pool.

    Returns:
        ``points.csv`` server columns, plus the requests and generated-token counters and the
        largest GPU memory in use; a value the deltas do not hold is absent.
    """
    ids = set(point_ids)
    if server.empty:
        return {}
    sub = server[server[Srv.POINT_ID].isin(ids)]
    if sub.empty:
        return {}
    delta = pd.to_numeric(sub[Srv.DELTA], errors="coerce")
    totals = delta.groupby(sub[Srv.METRIC]).sum()
    out: dict[str, float] = {}
    for col, metric in _SERVER_MEANS:
        s = totals.get(metric + "_sum")
        c = totals.get(metric + "_count")
        if s is not None and c is not None and c > 0:
            out[col] = float(s) / float(c)
    for col, metric in (
        (Point.SERVER_REQUESTS, names.TOKENBOOTH_REQUESTS),
        (Point.SERVER_GENERATION_TOKENS, names.TOKENBOOTH_GENERATION_TOKENS),
    ):
        if metric in totals.index:
            out[col] = float(totals[metric])
    mem = sub[sub[Srv.METRIC] == names.TOKENBOOTH_GPU_MEMORY_USED]
    if not mem.empty:
        out[GPU_MEMORY_COLUMN] = float(pd.to_numeric(mem[Srv.AFTER], errors="coerce").max())
    return out


# ------------------------------------------------------------------------------ validity


def _is_open_loop(row: pd.Series) -> bool:
    return str(row.get(Point.LOAD_MODE, "")) == "rate" or str(row.get(Point.ARRIVAL, "")) in (
        "constant",
        "poisson",
    )


def point_validity(row: pd.Series, *, lag_threshold_s: float, min_samples: int) -> str:
    """Why a point cannot be used for capacity figures; ``""`` when it can.

    Checks the point's status, the number of successful requests, a majority of failed
    requests, open-loop schedule lag (a load generator that fell behind did not offer the
    stated load), a load generator flagged as the bottleneck, and the harness's own verdict.

    Args:
        row: A point row with recomputed statistics.
        lag_threshold_s: Largest acceptable open-loop p95 schedule lag.
        min_samples: Fewest successful requests a point needs.

    Returns:
        The reasons, ``"; "``-joined.
    """
    reasons: list[str] = []
    status = str(row.get(Point.STATUS, "") or "")
    if status and status != "ok":
        detail = str(row.get(Point.STATUS_DETAIL, "") or "")
        reasons.append(f"point failed: {status}" + (f" ({detail})" if detail else ""))
    n_ok = row.get(Point.N_OK)
    if n_ok is None or not (float(n_ok) >= min_samples):
        n_text = "no" if n_ok is None or not np.isfinite(float(n_ok)) else str(int(n_ok))
        reasons.append(f"too few samples: {n_text} successful requests < {min_samples}")
    err = float(row.get(Point.ERROR_RATE, math.nan))
    if math.isfinite(err) and err > MOSTLY_ERRORS:
        reasons.append(f"mostly errors ({err:.0%} of requests failed)")
    lag = float(row.get(Point.LAG_P95_S, math.nan))
    if _is_open_loop(row) and math.isfinite(lag) and lag > lag_threshold_s:
        reasons.append(f"schedule lag p95 {lag:.3f} s > {lag_threshold_s:g} s")
    bottleneck = row.get(Point.LOADGEN_BOTTLENECK)
    if bottleneck is True or str(bottleneck).lower() in ("true", "1", "1.0"):
        cpu = float(row.get(Point.LOADGEN_CPU_PERCENT, math.nan))
        cpu_text = f" (CPU {cpu:.0f}%)" if math.isfinite(cpu) else ""
        reasons.append(f"load generator was the bottleneck{cpu_text}")
    harness_valid = row.get(Point.VALID)
    harness_reason = str(row.get(Point.INVALID_REASON, "") or "")
    harness_invalid = harness_valid is False or str(harness_valid).lower() in ("false", "0")
    if harness_invalid and not reasons:
        reasons.append(f"harness: {harness_reason or 'marked invalid'}")
    return "; ".join(reasons)


def slo_check(row: pd.Series | dict[str, Any], slo: Slo) -> str:
    """Which SLO terms a point or load level violates; ``""`` when it meets the SLO.

    Args:
        row: Statistics with the :class:`loadgen.results.Point` percentile columns.
        slo: The objective.

    Returns:
        The violated terms, ``", "``-joined (a missing measurement counts as a violation).
    """
    failed = []
    for limit, col, label in _slo_terms(slo):
        v = float(row.get(col, math.nan))
        if not (v <= limit):
            failed.append(label)
    return ", ".join(failed)


def _slo_terms(slo: Slo) -> list[tuple[float, str, str]]:
    terms: list[tuple[float, str, str]] = []
    if slo.ttft_p95_s is not None:
        terms.append((slo.ttft_p95_s, Point.TTFT_P95_S, "TTFT p95"))
    if slo.tpot_p95_s is not None:
        terms.append((slo.tpot_p95_s, Point.TPOT_P95_S, "TPOT p95"))
    if slo.e2e_p95_s is not None:
        terms.append((slo.e2e_p95_s, Point.E2E_P95_S, "E2E p95"))
    if slo.max_error_rate is not None:
        terms.append((slo.max_error_rate, Point.ERROR_RATE, "error rate"))
    return terms


# ------------------------------------------------------------------------------ knee / capacity


@dataclass(frozen=True)
class Knee:
    """The knee of one configuration's latency-throughput curve.

    Attributes:
        found: Whether a knee was detected (see :data:`KNEE_METHOD`).
        load_level: Load level of the knee point.
        achieved_rps: Throughput at the knee.
        output_tokens_per_s: Output tokens/s at the knee.
        ttft_p95_s: TTFT p95 at the knee.
        note: Why no knee was reported, or ``""``.
        method: The method, named.
    """

    found: bool
    load_level: float = math.nan
    achieved_rps: float = math.nan
    output_tokens_per_s: float = math.nan
    ttft_p95_s: float = math.nan
    note: str = ""
    method: str = KNEE_METHOD


def find_knee(levels: pd.DataFrame, *, latency: str = Point.TTFT_P95_S) -> Knee:
    """Detect the knee of one configuration (method: :data:`KNEE_METHOD`).

    Args:
        levels: Valid load levels of one configuration.
        latency: Tail latency column to watch.

    Returns:
        The knee, or ``found=False`` with the reason.
    """
    if levels.empty:
        return Knee(False, note="no valid load levels")
    d = levels.sort_values(Point.LOAD_LEVEL)
    rps = pd.to_numeric(d[Point.ACHIEVED_RPS], errors="coerce")
    lat = pd.to_numeric(d[latency], errors="coerce")
    d = d[np.isfinite(rps) & np.isfinite(lat)]
    if len(d) < 3:
        return Knee(False, note=f"needs at least 3 valid load levels, has {len(d)}")
    x = d[Point.ACHIEVED_RPS].to_numpy(dtype=float)
    y = d[latency].to_numpy(dtype=float)
    xr, yr = x.max() - x.min(), y.max() - y.min()
    if xr <= 0:
        return Knee(False, note="throughput did not change across load levels")
    if yr <= 0.05 * max(float(y.min()), 1e-9):
        return Knee(False, note="tail latency flat across the measured range: knee not reached")
    gain = (x - x.min()) / xr - (y - y.min()) / yr
    i = int(np.argmax(gain))
    if i == len(d) - 1 or gain[i] < KNEE_MIN_GAIN:
        return Knee(False, note="no sharp turn in tail latency within the measured range")
    row = d.iloc[i]
    return Knee(
        True,
        load_level=float(row[Point.LOAD_LEVEL]),
        achieved_rps=float(row[Point.ACHIEVED_RPS]),
        output_tokens_per_s=float(row[Point.OUTPUT_TOKENS_PER_S]),
        ttft_p95_s=float(row[latency]),
    )


@dataclass(frozen=True)
class Capacity:
    """Highest load of one configuration that meets the SLO.

    Attributes:
        status: ``interpolated`` (crossing between two measured levels), ``not_reached`` (every
            valid level passed: the figures are a lower bound), ``below_range`` (even the lowest
            level failed) or ``no_data``.
        rate_rps: Sustainable requests/s (achieved), NaN when ``below_range``/``no_data``.
        output_tokens_per_s: Output tokens/s at that rate.
        load_level: Sustainable load level (concurrency or offered requests/s).
        concurrency: Sustainable concurrency (closed loop: users; open loop: Little's law).
        limiting: The SLO term that binds, ``""`` when none did.
        between: Load levels the crossing lies between.
        note: Caveats, e.g. a level passing again above the first failure.
        interpolation: How the value was obtained.
        rate_ci: The same interpolation on the percentiles' 95% bootstrap bounds
            (optimistic, pessimistic), ``None`` without CIs; 0 where a bound fails everywhere.
    """

    status: str
    rate_rps: float = math.nan
    output_tokens_per_s: float = math.nan
    load_level: float = math.nan
    concurrency: float = math.nan
    limiting: str = ""
    between: tuple[float, float] | None = None
    note: str = ""
    interpolation: str = CAPACITY_INTERPOLATION
    rate_ci: tuple[float, float] | None = None

    @property
    def usable(self) -> bool:
        """Whether :attr:`rate_rps` is a number a recommendation can rely on."""
        return self.status in ("interpolated", "not_reached") and math.isfinite(self.rate_rps)

    def describe(self) -> str:
        """A short human reading, e.g. ``5.00 req/s (TTFT p95 binds between 4 and 6)``."""
        if self.status == "no_data":
            return "no valid points"
        if self.status == "below_range":
            return f"below the lowest level measured ({self.limiting} fails there)"
        if self.status == "not_reached":
            return f"≥ {self.rate_rps:.3g} req/s (SLO met at every level measured)"
        lo, hi = self.between or (math.nan, math.nan)
        ci = f" [95% CI {self.rate_ci[0]:.3g}–{self.rate_ci[1]:.3g}]" if self.rate_ci else ""
        return f"{self.rate_rps:.3g} req/s{ci} ({self.limiting} binds between {lo:g} and {hi:g})"


_CI_BOUNDS: Final[dict[str, tuple[str, str]]] = {
    # metric column: (optimistic bound, pessimistic bound)
    Point.TTFT_P95_S: (Rpt.TTFT_P95_LO, Rpt.TTFT_P95_HI),
    Point.TPOT_P95_S: (Rpt.TPOT_P95_LO, Rpt.TPOT_P95_HI),
    Point.E2E_P95_S: (Rpt.E2E_P95_LO, Rpt.E2E_P95_HI),
}


def slo_capacity(levels: pd.DataFrame, slo: Slo) -> Capacity:
    """Interpolate the highest load meeting the SLO (method: :data:`CAPACITY_INTERPOLATION`).

    The same interpolation on the bootstrap bounds of each percentile (lower bounds: the
    optimistic end, upper bounds: the pessimistic end) gives :attr:`Capacity.rate_ci`.

    Args:
        levels: Valid load levels of one configuration with :attr:`Rpt.SLO_PASS`.
        slo: The objective.

    Returns:
        The capacity.
    """
    d = levels.sort_values(Point.LOAD_LEVEL).reset_index(drop=True)
    if d.empty:
        return Capacity("no_data")
    cap = _crossing(d, slo, {})
    bounds = []
    for side in (0, 1):
        cols = {m: pair[side] for m, pair in _CI_BOUNDS.items() if pair[side] in d.columns}
        if not cols or d[list(cols.values())].isna().all().all():
            return cap
        bound = _crossing(d, slo, cols)
        bounds.append(bound.rate_rps if bound.usable else 0.0)
    lo, hi = min(bounds), max(bounds)
    return replace(cap, rate_ci=(lo, hi))


def _crossing(d: pd.DataFrame, slo: Slo, use: dict[str, str]) -> Capacity:
    """The first SLO crossing, reading each metric from ``use.get(metric, metric)``."""
    closed = not _is_open_loop(d.iloc[0])
    terms = [(limit, use.get(col, col), label) for limit, col, label in _slo_terms(slo)]
    failed = [
        ", ".join(label for limit, col, label in terms if not (float(row[col]) <= limit))
        for _, row in d.iterrows()
    ]
    passes = np.asarray([not f for f in failed])
    fails = np.flatnonzero(~passes)

    def conc(row: pd.Series) -> float:
        return float(row[Point.LOAD_LEVEL]) if closed else float(row[Rpt.IN_FLIGHT_MEAN])

    if fails.size == 0:
        last = d.iloc[-1]
        return Capacity(
            "not_reached",
            rate_rps=float(last[Point.ACHIEVED_RPS]),
            output_tokens_per_s=float(last[Point.OUTPUT_TOKENS_PER_S]),
            load_level=float(last[Point.LOAD_LEVEL]),
            concurrency=conc(last),
        )
    f = int(fails[0])
    b = d.iloc[f]
    if f == 0:
        return Capacity("below_range", limiting=failed[0])
    a = d.iloc[f - 1]
    best_frac, limiting = 1.0, ""
    for limit, col, label in terms:
        ma, mb = float(a[col]), float(b[col])
        if mb <= limit:
            continue
        frac = (limit - ma) / (mb - ma) if math.isfinite(mb) and mb > ma else 0.0
        frac = min(max(frac, 0.0), 1.0)
        if frac < best_frac or not limiting:
            best_frac, limiting = frac, label

    def lerp(col: str) -> float:
        return float(a[col]) + best_frac * (float(b[col]) - float(a[col]))

    note = ""
    if passes[f + 1 :].any():
        note = "a higher level passed again; the first crossing is used"
    return Capacity(
        "interpolated",
        rate_rps=lerp(Point.ACHIEVED_RPS),
        output_tokens_per_s=lerp(Point.OUTPUT_TOKENS_PER_S),
        load_level=lerp(Point.LOAD_LEVEL),
        concurrency=lerp(Point.LOAD_LEVEL) if closed else lerp(Rpt.IN_FLIGHT_MEAN),
        limiting=limiting,
        between=(float(a[Point.LOAD_LEVEL]), float(b[Point.LOAD_LEVEL])),
        note=note,
    )


# ------------------------------------------------------------------------------ whole run

_CONFIG_COLUMNS: Final[tuple[str, ...]] = (
    Rpt.CONFIG,
    Rpt.BASE_CONFIG,
    Point.CONFIG_ID,
    Point.REPLICAS,
    Point.MAX_BATCH_SIZE,
    Point.MAX_BATCH_DELAY_MS,
    Point.BATCH_WORKERS,
    Point.INTRA_THREADS,
    Point.QUANTIZATION,
    Point.LOAD_MODE,
    Point.ARRIVAL,
    Point.LOAD_LEVEL,
)


@dataclass
class Analysis:
    """A run's statistics: every point, pooled valid load levels, knees and SLO capacity.

    Attributes:
        run: The run.
        points: One row per point (valid or not) with recomputed statistics, validity and SLO.
        levels: Valid points pooled per configuration and load level (repeats merged).
        knees: Per configuration label.
        capacity: Per configuration label.
    """

    run: Run
    points: pd.DataFrame
    levels: pd.DataFrame
    knees: dict[str, Knee]
    capacity: dict[str, Capacity]

    @property
    def slo(self) -> Slo:
        """The run's SLO."""
        return self.run.spec.slo

    def samples(self, config: str, load_level: float, column: str) -> FloatArray:
        """Raw samples of one request column over the valid points of one load level.

        Args:
            config: Configuration label.
            load_level: Load level.
            column: A :class:`loadgen.results.Col` column; :attr:`Col.ITL_S` is flattened into
                every inter-token gap.

        Returns:
            Finite samples of successful requests.
        """
        lv = self.levels
        if lv.empty or self.run.requests.empty:
            return np.empty(0)
        hit = lv[(lv[Rpt.CONFIG] == config) & np.isclose(lv[Point.LOAD_LEVEL], load_level)]
        if hit.empty:
            return np.empty(0)
        ids = [int(i) for i in str(hit.iloc[0][Rpt.POINT_IDS]).split(",") if i]
        reqs = self.run.requests
        sub = reqs[reqs[Col.POINT_ID].isin(ids) & reqs[Col.OK].fillna(False).astype(bool)]
        return _gaps(sub[column]) if column == Col.ITL_S else _finite(sub[column])

    def capacity_table(self) -> pd.DataFrame:
        """Per configuration: knee, SLO capacity, error rate and point counts.

        Returns:
            One row per configuration label.
        """
        rows = []
        for config, group in self.points.groupby(Rpt.CONFIG, sort=True):
            lv = self.levels[self.levels[Rpt.CONFIG] == config]
            knee = self.knees[str(config)]
            cap = self.capacity[str(config)]
            n_req = float(group[Point.N_REQUESTS].sum())
            rows.append(
                {
                    Rpt.CONFIG: config,
                    Rpt.BASE_CONFIG: group[Rpt.BASE_CONFIG].iloc[0],
                    Point.REPLICAS: int(group[Point.REPLICAS].iloc[0]),
                    Point.QUANTIZATION: group[Point.QUANTIZATION].iloc[0],
                    Point.LOAD_MODE: group[Point.LOAD_MODE].iloc[0],
                    Rpt.N_POINTS_TOTAL: len(group),
                    Rpt.N_VALID: int(group[Point.VALID].sum()),
                    Rpt.KNEE_FOUND: knee.found,
                    Rpt.KNEE_LOAD_LEVEL: knee.load_level,
                    Rpt.KNEE_RPS: knee.achieved_rps,
                    Rpt.KNEE_OUTPUT_TOKENS_PER_S: knee.output_tokens_per_s,
                    Rpt.KNEE_TTFT_P95_S: knee.ttft_p95_s,
                    Rpt.KNEE_NOTE: knee.note,
                    Rpt.CAPACITY_STATUS: cap.status,
                    Rpt.CAPACITY_RPS: cap.rate_rps,
                    Rpt.CAPACITY_RPS_CI_LO: cap.rate_ci[0] if cap.rate_ci else math.nan,
                    Rpt.CAPACITY_RPS_CI_HI: cap.rate_ci[1] if cap.rate_ci else math.nan,
                    Rpt.CAPACITY_OUTPUT_TOKENS_PER_S: cap.output_tokens_per_s,
                    Rpt.CAPACITY_LOAD_LEVEL: cap.load_level,
                    Rpt.CAPACITY_CONCURRENCY: cap.concurrency,
                    Rpt.CAPACITY_LIMITING: cap.limiting,
                    Rpt.CAPACITY_NOTE: cap.note,
                    Rpt.PEAK_RPS: float(lv[Point.ACHIEVED_RPS].max()) if len(lv) else math.nan,
                    Point.ERROR_RATE: float(group[Point.N_ERRORS].sum()) / n_req
                    if n_req
                    else math.nan,
                }
            )
        return pd.DataFrame(rows)


def _with_server(stats: dict[str, Any], run: Run, ids: list[int], rows: pd.DataFrame) -> None:
    means = server_means(run.server, ids)
    for col in (*SERVER_MEAN_COLUMNS, Point.SERVER_REQUESTS, Point.SERVER_GENERATION_TOKENS):
        if col in means:
            stats[col] = means[col]
        else:  # no scraped deltas: the harness's own means, if it wrote any
            vals = pd.to_numeric(rows[col], errors="coerce") if col in rows else pd.Series()
            stats[col] = float(vals.mean()) if vals.notna().any() else math.nan
    stats[GPU_MEMORY_COLUMN] = means.get(GPU_MEMORY_COLUMN, math.nan)


def analyze(run: Run, *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Analysis:
    """Compute every statistic a report shows.

    Args:
        run: A loaded run.
        n_resamples: Bootstrap resamples per confidence interval.
        seed: Bootstrap seed.

    Returns:
        The analysis.
    """
    spec = run.spec
    req_by_point = (
        {int(k): g for k, g in run.requests.groupby(Col.POINT_ID, sort=False)}
        if not run.requests.empty
        else {}
    )
    empty = run.requests.iloc[0:0]
    rows = []
    for _, p in run.points.iterrows():
        pid = int(p[Point.POINT_ID])
        reqs = req_by_point.get(pid, empty)
        base = p.to_dict()
        if len(reqs):
            stats = summarize_requests(
                reqs, float(p[Point.DURATION_S]), n_resamples=n_resamples, seed=seed
            )
            base.update(stats)
        else:
            # No raw rows: the harness's summary stands, without CIs or sample counts.
            for c in (Rpt.N_TTFT, Rpt.N_ITL, Rpt.N_TPOT, Rpt.N_E2E):
                base[c] = 0
        frame = run.points[run.points[Point.POINT_ID] == pid]
        _with_server(base, run, [pid], frame)
        rows.append(base)
    points = pd.DataFrame(rows)
    if points.empty:
        points = run.points.copy()
    reasons = [
        point_validity(r, lag_threshold_s=spec.lag_threshold_s, min_samples=spec.min_samples)
        for _, r in points.iterrows()
    ]
    points[Point.INVALID_REASON] = reasons
    points[Point.VALID] = [not r for r in reasons]
    points[Rpt.SLO_FAIL] = [slo_check(r, spec.slo) for _, r in points.iterrows()]
    points[Rpt.SLO_PASS] = points[Rpt.SLO_FAIL] == ""
    points[Rpt.CPU_THREADS] = (
        points[Point.REPLICAS]
        * pd.to_numeric(points[Point.BATCH_WORKERS], errors="coerce").fillna(1)
        * pd.to_numeric(points[Point.INTRA_THREADS], errors="coerce").fillna(1)
    )

    level_rows = []
    valid = points[points[Point.VALID]]
    for _, group in valid.groupby(
        [Rpt.CONFIG, Point.LOAD_MODE, Point.LOAD_LEVEL], sort=True, dropna=False
    ):
        ids = [int(i) for i in group[Point.POINT_ID]]
        first = group.iloc[0]
        row: dict[str, Any] = {c: first.get(c) for c in _CONFIG_COLUMNS}
        reqs_list = [req_by_point[i] for i in ids if i in req_by_point]
        if reqs_list:
            duration = float(pd.to_numeric(group[Point.DURATION_S], errors="coerce").sum())
            row.update(
                summarize_requests(
                    pd.concat(reqs_list, ignore_index=True),
                    duration,
                    n_resamples=n_resamples,
                    seed=seed,
                )
            )
        else:
            for c in group.columns:
                if c not in row and pd.api.types.is_numeric_dtype(group[c]):
                    row[c] = float(group[c].mean())
        row[Point.OFFERED_RPS] = float(pd.to_numeric(group[Point.OFFERED_RPS]).mean())
        _with_server(row, run, ids, group)
        row[Rpt.N_POINTS] = len(ids)
        row[Rpt.POINT_IDS] = ",".join(str(i) for i in ids)
        row[Rpt.CPU_THREADS] = float(first[Rpt.CPU_THREADS])
        level_rows.append(row)
    levels = pd.DataFrame(level_rows)
    if levels.empty:
        levels = pd.DataFrame(columns=[*points.columns, Rpt.N_POINTS, Rpt.POINT_IDS])
    else:
        levels[Rpt.SLO_FAIL] = [slo_check(r, spec.slo) for _, r in levels.iterrows()]
        levels[Rpt.SLO_PASS] = levels[Rpt.SLO_FAIL] == ""

    knees: dict[str, Knee] = {}
    capacity: dict[str, Capacity] = {}
    for config in sorted(points[Rpt.CONFIG].unique()):
        lv = levels[levels[Rpt.CONFIG] == config] if len(levels) else levels
        knees[str(config)] = find_knee(lv)
        capacity[str(config)] = slo_capacity(lv, spec.slo)
    return Analysis(run=run, points=points, levels=levels, knees=knees, capacity=capacity)
