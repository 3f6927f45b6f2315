"""Per-point statistics: the one computation behind ``points.csv`` and every report figure.

Pure functions of request rows and server metric deltas (numpy and pandas, no Locust), so the
harness (:mod:`loadgen.runner`, which writes ``points.csv``) and the report
(:mod:`reports.analysis`, which recomputes from the raw rows with confidence intervals and pools
repeats) cannot disagree about a percentile, a rate, a server mean or whether a point is valid.

Percentiles are exact: numpy's linear interpolation between order statistics of every sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from loadgen.results import REQUEST_COLUMNS, Col, Point, PointStatus, Srv, TokensSource
from loadgen.servers.canonical import KV_CACHE_USAGE, PREEMPTIONS
from loadgen.spec import LoadLevel, SLOSpec
from telemetry import names

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "MOSTLY_ERRORS",
    "SERVER_VIEW_COLUMNS",
    "SYNC_RATIO_WARN",
    "SYNC_SHARE_WARN",
    "SYNC_WINDOW_S",
    "THROUGHPUT_WINDOWS",
    "Stat",
    "bootstrap_quantile_ci",
    "bootstrap_quantile_draws",
    "finite",
    "gaps",
    "goodput",
    "percentile",
    "point_reasons",
    "poisson_sync_share",
    "server_summary",
    "slo_check",
    "slo_met",
    "slo_terms",
    "summarize_point",
    "summarize_requests",
    "sync_share",
    "synchronised",
    "synchrony",
    "turn_summary",
    "usage_mismatch_rate",
    "validity_reasons",
    "window_duration",
]

BOOTSTRAP_RESAMPLES: Final = 1000
"""Bootstrap resamples per confidence interval in reports (the harness computes none)."""
MOSTLY_ERRORS: Final = 0.5
"""A point where more than this fraction failed measures the failure, not the service."""
THROUGHPUT_WINDOWS: Final = 10
"""Equal time windows behind the batch-means standard error of the achieved rate."""
SYNC_WINDOW_S: Final = 0.002
"""Two sends this close count as simultaneous (:func:`sync_share`)."""
SYNC_RATIO_WARN: Final = 3.0
SYNC_SHARE_WARN: Final = 0.10
"""A point is synchronised when its sync share exceeds both this share and
:data:`SYNC_RATIO_WARN` times what Poisson arrivals at its rate would give."""

FloatArray = npt.NDArray[np.float64]


class Stat:
    """Statistics :func:`summarize_requests` adds beside the ``points.csv`` columns.

    They are not written into a run directory (the report derives them from the raw rows), so
    they live here rather than in :class:`loadgen.results.Point`.
    """

    N_TTFT: Final = "n_ttft"  # samples behind the TTFT percentiles
    N_ITL: Final = "n_itl"  # inter-token gaps behind the ITL percentiles
    N_TPOT: Final = "n_tpot"
    N_E2E: Final = "n_e2e"
    TTFT_P95_LO: Final = "ttft_p95_ci_lo_s"
    TTFT_P95_HI: Final = "ttft_p95_ci_hi_s"
    ITL_P95_LO: Final = "itl_p95_ci_lo_s"
    ITL_P95_HI: Final = "itl_p95_ci_hi_s"
    TPOT_P95_LO: Final = "tpot_p95_ci_lo_s"
    TPOT_P95_HI: Final = "tpot_p95_ci_hi_s"
    E2E_P95_LO: Final = "e2e_p95_ci_lo_s"
    E2E_P95_HI: Final = "e2e_p95_ci_hi_s"
    TTFT_MEAN_S: Final = "ttft_mean_s"
    E2E_MEAN_S: Final = "e2e_mean_s"
    COMPLETION_TOKENS_MEAN: Final = "completion_tokens_mean"
    ACHIEVED_RPS_SE: Final = "achieved_rps_se"  # batch-means standard error
    IN_FLIGHT_MEAN: Final = "in_flight_mean"  # Little's law: achieved rps x mean e2e
    GPU_MEMORY_USED_BYTES: Final = "gpu_memory_used_bytes"  # largest seen over the point


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


def finite(series: Any) -> FloatArray:
    """The finite numbers of a column (non-numbers and NaN dropped)."""
    arr: FloatArray = np.asarray(pd.to_numeric(series, errors="coerce"), dtype=float)
    out: FloatArray = arr[np.isfinite(arr)]
    return out


def gaps(series: Any) -> FloatArray:
    """Every finite inter-token gap of a column of per-request gap lists, flattened."""
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


# ------------------------------------------------------------------------------ synchrony


def sync_share(sent_at: Sequence[float] | FloatArray, window_s: float = SYNC_WINDOW_S) -> float:
    """Share of sends with another send within ``window_s`` (before or after); NaN below 2.

    Closed-loop users that ride one batch finish together and send again together: a high
    share says the point measured a lockstep, not independent clients.
    """
    t = np.sort(np.asarray(sent_at, dtype=float))
    t = t[np.isfinite(t)]
    if t.size < 2:
        return math.nan
    gap = np.diff(t)
    near = np.zeros(t.size, dtype=bool)
    near[:-1] |= gap <= window_s  # the next send is close
    near[1:] |= gap <= window_s  # the previous send is close
    return float(near.mean())


def poisson_sync_share(rate: float, window_s: float = SYNC_WINDOW_S) -> float:
    """:func:`sync_share` that independent (Poisson) sends at ``rate`` per second would give.

    A send's gaps to its previous and its next send are independent Exp(rate), so it has no
    neighbour within ``w`` with probability ``exp(-rate w)**2``: the share is
    ``1 - exp(-2 rate w)`` (ignoring the first and last send, which have one neighbour each).
    """
    if not (rate >= 0) or not math.isfinite(rate):
        return math.nan
    return -math.expm1(-2.0 * rate * window_s)


def synchrony(sent_at: Sequence[float] | FloatArray) -> dict[str, float]:
    """A point's sync share, its Poisson expectation at the point's send rate, and their ratio.

    The rate is the sends' own: (n - 1) gaps over the span from first to last send. Computed
    per point only: pooled repeats would count the time between points as a gap.

    Returns:
        :attr:`Point.SYNC_SHARE`, :attr:`Point.SYNC_SHARE_POISSON` and :attr:`Point.SYNC_RATIO`
        (NaN with fewer than two sends).
    """
    t = np.asarray(sent_at, dtype=float)
    t = t[np.isfinite(t)]
    share = sync_share(t)
    span = float(t.max() - t.min()) if t.size >= 2 else 0.0
    # Every send at one instant has no rate to compare with: NaN, never judged synchronised.
    expected = poisson_sync_share((t.size - 1) / span) if span > 0 else math.nan
    ratio = share / expected if expected > 0 else math.nan
    return {Point.SYNC_SHARE: share, Point.SYNC_SHARE_POISSON: expected, Point.SYNC_RATIO: ratio}


def synchronised(share: float, expected: float) -> bool:
    """Whether a point's sends came in lockstep (see :data:`SYNC_SHARE_WARN`); False for NaN."""
    return bool(share > SYNC_SHARE_WARN and share > SYNC_RATIO_WARN * expected)


# ------------------------------------------------------------------------------ one point


def window_duration(requests: pd.DataFrame) -> float:
    """A point's measured window: first send to last finish of its requests (NaN when none).

    Every rate of a point divides by this, in the harness and in the report alike.
    """
    if requests.empty:
        return math.nan
    start = finite(requests[Col.SENT_AT])
    end = finite(requests[Col.FINISHED_AT])
    if not (start.size and end.size):
        return math.nan
    return max(float(end.max()) - float(start.min()), 1e-9)


@dataclass(frozen=True, slots=True)
class _Samples:
    """The finite latency samples of some successful requests, extracted once."""

    ttft: FloatArray
    itl: FloatArray
    tpot: FloatArray
    e2e: FloatArray

    @classmethod
    def of(cls, ok: pd.DataFrame) -> _Samples:
        return cls(
            finite(ok[Col.TTFT_S]),
            gaps(ok[Col.ITL_S]),
            finite(ok[Col.TPOT_S]),
            finite(ok[Col.E2E_S]),
        )


def _latency_stats(ok: pd.DataFrame, x: _Samples) -> dict[str, Any]:
    return {
        Stat.N_TTFT: x.ttft.size,
        Point.TTFT_P50_S: percentile(x.ttft, 0.50),
        Point.TTFT_P90_S: percentile(x.ttft, 0.90),
        Point.TTFT_P95_S: percentile(x.ttft, 0.95),
        Point.TTFT_P99_S: percentile(x.ttft, 0.99),
        Stat.TTFT_MEAN_S: float(x.ttft.mean()) if x.ttft.size else math.nan,
        Point.TTFT_SCHED_P95_S: percentile(finite(ok[Col.TTFT_FROM_SCHEDULE_S]), 0.95),
        # Absent from runs recorded before the column existed: not measured, so NaN.
        Point.TTFT_CONTENT_P95_S: (
            percentile(finite(ok[Col.TTFT_CONTENT_S]), 0.95)
            if Col.TTFT_CONTENT_S in ok
            else math.nan
        ),
        Stat.N_ITL: x.itl.size,
        Point.ITL_P50_S: percentile(x.itl, 0.50),
        Point.ITL_P95_S: percentile(x.itl, 0.95),
        Point.ITL_P99_S: percentile(x.itl, 0.99),
        Stat.N_TPOT: x.tpot.size,
        Point.TPOT_P50_S: percentile(x.tpot, 0.50),
        Point.TPOT_P95_S: percentile(x.tpot, 0.95),
        Stat.N_E2E: x.e2e.size,
        Point.E2E_P50_S: percentile(x.e2e, 0.50),
        Point.E2E_P95_S: percentile(x.e2e, 0.95),
        Point.E2E_P99_S: percentile(x.e2e, 0.99),
        Stat.E2E_MEAN_S: float(x.e2e.mean()) if x.e2e.size else math.nan,
        Point.E2E_SCHED_P95_S: percentile(finite(ok[Col.E2E_FROM_SCHEDULE_S]), 0.95),
    }


def _p95_cis(x: _Samples, n_resamples: int, seed: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for values, lo, hi in (
        (x.ttft, Stat.TTFT_P95_LO, Stat.TTFT_P95_HI),
        (x.itl, Stat.ITL_P95_LO, Stat.ITL_P95_HI),
        (x.tpot, Stat.TPOT_P95_LO, Stat.TPOT_P95_HI),
        (x.e2e, Stat.E2E_P95_LO, Stat.E2E_P95_HI),
    ):
        out[lo], out[hi] = bootstrap_quantile_ci(values, 0.95, n_resamples=n_resamples, seed=seed)
    return out


def usage_mismatch_rate(ok: pd.DataFrame) -> float:
    """Share of successful rows whose usage ``completion_tokens`` differ from the chunk count.

    Only rows that carried usage can disagree with it; NaN when none did. A row without a
    :attr:`loadgen.results.Col.TOKENS_SOURCE` was written before the column existed, when every
    successful row had usage.
    """
    if Col.TOKENS_SOURCE in ok.columns:
        source = ok[Col.TOKENS_SOURCE]
        ok = ok[source.isna() | (source == TokensSource.USAGE)]
    if not len(ok) or Col.USAGE_MISMATCH not in ok.columns:
        return math.nan
    return float(ok[Col.USAGE_MISMATCH].eq(True).mean())  # NaN (not recorded) is no mismatch


def slo_met(requests: pd.DataFrame, slo: SLOSpec) -> npt.NDArray[np.bool_]:
    """Per request: it succeeded and met every per-request latency term of ``slo``.

    Each ``[slo]`` latency limit (TTFT, TPOT, E2E) applies to every request, as vLLM's
    ``bench serve --goodput`` does; a missing measurement fails, except TPOT of a request with
    fewer than two output tokens, which has no inter-token time (vLLM counts it as 0).
    """
    met: npt.NDArray[np.bool_] = requests[Col.OK].fillna(False).astype(bool).to_numpy()

    def col(name: str) -> FloatArray:
        return np.asarray(pd.to_numeric(requests[name], errors="coerce"), dtype=float)

    if slo.ttft_p95_s is not None:
        met = met & (col(Col.TTFT_S) <= slo.ttft_p95_s)
    if slo.tpot_p95_s is not None:
        tpot = col(Col.TPOT_S)
        one_token = ~np.isfinite(tpot) & (np.nan_to_num(col(Col.COMPLETION_TOKENS)) < 2)
        met = met & ((tpot <= slo.tpot_p95_s) | one_token)
    if slo.e2e_p95_s is not None:
        met = met & (col(Col.E2E_S) <= slo.e2e_p95_s)
    return met


def goodput(requests: pd.DataFrame, slo: SLOSpec, duration_s: float) -> float:
    """Requests/s that succeeded and met every per-request SLO term: vLLM's per-request
    ``bench serve --goodput``, not DistServe's (the highest rate whose SLO attainment reaches
    a target).

    Latencies count from the actual send, not the scheduled one: an open-loop point whose load
    generator lagged is already invalid (schedule lag over ``[run] lag_threshold_s``), and a
    valid point's lag is below that threshold, so goodput matches vLLM's and the report's
    per-request TTFT. ``ttft_from_schedule_s`` in ``requests.parquet`` keeps the other view.

    Args:
        requests: Rows of one point (or pooled repeats), :class:`loadgen.results.Col` columns.
        slo: The objective; its latency limits judge each request (:func:`slo_met`).
        duration_s: The measured window (the denominator of every rate of the point).

    Returns:
        Requests/s; NaN without a positive window.
    """
    if not duration_s > 0:
        return math.nan
    return float(slo_met(requests, slo).sum()) / duration_s


def slo_terms(slo: SLOSpec) -> list[tuple[float, str, str]]:
    """The checked SLO terms as ``(limit, Point column, label)``, in :meth:`SLOSpec.describe`
    order: the one list behind every SLO verdict (points, levels, the harness's search)."""
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


def slo_check(row: pd.Series | Mapping[str, Any], slo: SLOSpec) -> str:
    """Which SLO terms a point or load level violates; ``""`` when it meets the SLO.

    Args:
        row: Statistics with the :class:`loadgen.results.Point` percentile columns.
        slo: The objective.

    Returns:
        The violated terms, ``", "``-joined (a missing measurement counts as a violation).
    """
    failed = []
    for limit, col, label in slo_terms(slo):
        v = float(row.get(col, math.nan))
        if not (v <= limit):
            failed.append(label)
    return ", ".join(failed)


def summarize_requests(
    requests: pd.DataFrame,
    duration_s: float,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    slo: SLOSpec | None = None,
) -> dict[str, Any]:
    """Exact latency percentiles, bootstrap CIs, counts and throughput of some request rows.

    Args:
        requests: Rows with the :class:`loadgen.results.Col` columns (one point, or the pooled
            repeats of one load level).
        duration_s: The measured window they came from (the denominator of every rate); NaN
            uses the span of their finish times.
        n_resamples: Bootstrap resamples per confidence interval (0: no intervals, NaN bounds).
        seed: Bootstrap seed.
        slo: When given, :attr:`Point.GOODPUT_RPS` is added (:func:`goodput`).

    Returns:
        Values keyed by :class:`loadgen.results.Point` and :class:`Stat` columns.
    """
    ok_mask = requests[Col.OK].fillna(False).astype(bool).to_numpy()
    ok = requests[ok_mask]
    n_req, n_ok = len(requests), int(ok_mask.sum())
    finished = finite(ok[Col.FINISHED_AT])
    if not (duration_s > 0) and finished.size > 1:
        duration_s = float(finished.max() - finished.min())
    dur = duration_s if duration_s > 0 else math.nan
    lag = finite(requests[Col.SCHEDULE_LAG_S])
    tokens = finite(ok[Col.COMPLETION_TOKENS])
    samples = _Samples.of(ok)
    per_user = (
        finite(ok[Col.COMPLETION_TOKENS] / ok[Col.E2E_S].where(ok[Col.E2E_S] > 0))
        if n_ok
        else np.empty(0)
    )
    out: dict[str, Any] = {
        Point.N_REQUESTS: n_req,
        Point.N_OK: n_ok,
        Point.N_ERRORS: n_req - n_ok,
        Point.ERROR_RATE: (n_req - n_ok) / n_req if n_req else math.nan,
        Point.DURATION_S: dur,
        Point.ACHIEVED_RPS: n_ok / dur,
        Stat.ACHIEVED_RPS_SE: _rate_se(finished, dur),
        Point.OUTPUT_TOKENS_PER_S: float(tokens.sum()) / dur,
        Point.INPUT_TOKENS_PER_S: float(finite(ok[Col.PROMPT_TOKENS]).sum()) / dur,
        **_latency_stats(ok, samples),
        Point.LAG_P95_S: percentile(lag, 0.95),
        Point.LAG_MAX_S: float(lag.max()) if lag.size else math.nan,
        Stat.COMPLETION_TOKENS_MEAN: float(tokens.mean()) if tokens.size else math.nan,
        Point.PER_USER_TOKENS_PER_S: float(np.median(per_user)) if per_user.size else math.nan,
        Point.USAGE_MISMATCH_RATE: usage_mismatch_rate(ok),
        # Every request's, failed ones too; NaN for runs recorded before the column existed.
        Point.RETRIES: (
            int(finite(requests[Col.RETRIES]).sum()) if Col.RETRIES in requests else math.nan
        ),
    }
    out[Stat.IN_FLIGHT_MEAN] = out[Point.ACHIEVED_RPS] * out[Stat.E2E_MEAN_S]
    if slo is not None:
        out[Point.GOODPUT_RPS] = goodput(requests, slo, dur)
    out.update(_p95_cis(samples, n_resamples, seed))
    return out


def validity_reasons(
    *,
    n_ok: float,
    error_rate: float,
    lag_p95_s: float,
    open_loop: bool,
    lag_threshold_s: float,
    min_samples: int,
) -> list[str]:
    """Why a point's statistics cannot stand for the service; empty when they can.

    The harness writes these reasons into ``points.csv``; the report applies the same rules to
    its recomputed statistics (and adds what only it knows: failed points, a load generator that
    was the bottleneck).

    Args:
        n_ok: Successful requests.
        error_rate: Fraction of requests that failed (NaN when none were sent).
        lag_p95_s: p95 schedule lag of the point's sends.
        open_loop: Whether the point followed an arrival schedule (lag only counts then).
        lag_threshold_s: Largest acceptable open-loop p95 schedule lag.
        min_samples: Fewest successful requests a point needs.

    Returns:
        Human-readable reasons.
    """
    reasons: list[str] = []
    if not (n_ok >= min_samples):
        n_text = str(int(n_ok)) if math.isfinite(n_ok) else "no"
        reasons.append(f"too few samples: {n_text} successful requests < {min_samples}")
    if math.isfinite(error_rate) and error_rate > MOSTLY_ERRORS:
        reasons.append(f"mostly errors ({error_rate:.0%} of requests failed)")
    if open_loop and math.isfinite(lag_p95_s) and lag_p95_s > lag_threshold_s:
        reasons.append(
            f"schedule lag p95 {lag_p95_s * 1000:.0f} ms > {lag_threshold_s * 1000:.0f} ms "
            "(load generator fell behind)"
        )
    return reasons


def point_reasons(
    row: pd.Series | Mapping[str, Any],
    *,
    open_loop: bool,
    lag_threshold_s: float,
    min_samples: int,
) -> list[str]:
    """Why a finished point (a ``points.csv`` row) cannot stand for the service; empty when it can.

    The one verdict behind the report's valid points and the harness's SLO-edge search: the
    point's status, :func:`validity_reasons` on its statistics, a load generator flagged as the
    bottleneck, and, when nothing else explains it, the harness's own invalid mark.

    Args:
        row: The point's statistics (:class:`loadgen.results.Point` keys).
        open_loop: Whether the point followed an arrival schedule.
        lag_threshold_s: See :func:`validity_reasons`.
        min_samples: See :func:`validity_reasons`.
    """
    reasons: list[str] = []
    status = str(row.get(Point.STATUS, "") or "")
    if status and status != PointStatus.OK:
        detail = str(row.get(Point.STATUS_DETAIL, "") or "")
        reasons.append(f"point failed: {status}" + (f" ({detail})" if detail else ""))
    n_ok = row.get(Point.N_OK)
    reasons += validity_reasons(
        n_ok=math.nan if n_ok is None else float(n_ok),
        error_rate=float(row.get(Point.ERROR_RATE, math.nan)),
        lag_p95_s=float(row.get(Point.LAG_P95_S, math.nan)),
        open_loop=open_loop,
        lag_threshold_s=lag_threshold_s,
        min_samples=min_samples,
    )
    if _true(row.get(Point.LOADGEN_BOTTLENECK)):
        cpu = float(row.get(Point.LOADGEN_CPU_PERCENT, math.nan))
        cpu_text = f" (CPU {cpu:.0f}%)" if math.isfinite(cpu) else ""
        reasons.append(f"load generator was the bottleneck{cpu_text}")
    harness_valid = row.get(Point.VALID)
    harness_reason = str(row.get(Point.INVALID_REASON, "") or "")
    harness_invalid = harness_valid is False or str(harness_valid).lower() in ("false", "0")
    if harness_invalid and not reasons:
        reasons.append(f"harness: {harness_reason or 'marked invalid'}")
    return reasons


def _true(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "1.0")


def summarize_point(
    rows: Sequence[Mapping[str, Any]],
    *,
    level: LoadLevel,
    lag_threshold_s: float,
    min_samples: int,
    slo: SLOSpec | None = None,
    duration_s: float | None = None,
) -> dict[str, Any]:
    """The harness's ``points.csv`` statistics of one point, from its raw request rows.

    Args:
        rows: Request rows (:data:`loadgen.results.REQUEST_COLUMNS`) of the measured window.
        level: The point's load level.
        lag_threshold_s: See :func:`validity_reasons`.
        min_samples: See :func:`validity_reasons`.
        slo: The spec's objective, for :attr:`Point.GOODPUT_RPS` (``None``: not computed).
        duration_s: The measured window when the caller knows it (a stage's own length);
            ``None``: :func:`window_duration` of the rows.

    Returns:
        :class:`loadgen.results.Point` statistics with :attr:`Point.VALID` and
        :attr:`Point.INVALID_REASON` (plus :class:`Stat` values, which ``points.csv`` drops).
    """
    frame = pd.DataFrame(list(rows), columns=list(REQUEST_COLUMNS))
    window = window_duration(frame) if duration_s is None else duration_s
    out = summarize_requests(frame, window, n_resamples=0, slo=slo)
    out |= synchrony(finite(frame[Col.SENT_AT]))
    out[Point.OFFERED_RPS] = level.requests_per_s
    out[Point.OFFERED_SESSIONS_PER_S] = level.sessions_per_s
    reasons = validity_reasons(
        n_ok=out[Point.N_OK],
        error_rate=out[Point.ERROR_RATE],
        lag_p95_s=out[Point.LAG_P95_S],
        open_loop=level.mode == "rate",
        lag_threshold_s=lag_threshold_s,
        min_samples=min_samples,
    )
    out[Point.VALID] = not reasons
    out[Point.INVALID_REASON] = "; ".join(reasons)
    return out


# ------------------------------------------------------------------------------ server view

# Canonical sample names (loadgen.servers.canonical): every server kind's scrape is mapped onto
# them, so one table serves tokenbooth, vLLM, llama.cpp, TGI and SGLang alike.
# (points.csv column, histogram whose _sum/_count deltas give the mean)
_SERVER_MEANS: Final[tuple[tuple[str, str], ...]] = (
    (Point.SERVER_TTFT_MEAN_S, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN),
    (Point.SERVER_E2E_MEAN_S, names.GEN_AI_SERVER_REQUEST_DURATION),
    (Point.SERVER_QUEUE_WAIT_MEAN_S, names.TOKENBOOTH_QUEUE_WAIT),
    (Point.SERVER_BATCH_FORMATION_MEAN_S, names.TOKENBOOTH_BATCH_FORMATION_DELAY),
    (Point.SERVER_PREFILL_MEAN_S, names.TOKENBOOTH_BATCH_PREFILL),
    (Point.SERVER_DECODE_MEAN_S, names.TOKENBOOTH_BATCH_DECODE),
    (Point.SERVER_BATCH_SIZE_MEAN, names.TOKENBOOTH_BATCH_SIZE),
    (Point.SERVER_BATCH_FILL_MEAN, names.TOKENBOOTH_BATCH_FILL_RATIO),
)
_SERVER_TOTALS: Final[tuple[tuple[str, str], ...]] = (
    (Point.SERVER_REQUESTS, names.TOKENBOOTH_REQUESTS),
    (Point.SERVER_GENERATION_TOKENS, names.TOKENBOOTH_GENERATION_TOKENS),
    (Point.SERVER_PROMPT_TOKENS, names.TOKENBOOTH_PROMPT_TOKENS),
    (Point.SERVER_PREEMPTIONS, PREEMPTIONS),
)
# (points.csv column, gauge whose largest value seen before or after the window is kept)
_SERVER_MAXIMA: Final[tuple[tuple[str, str], ...]] = (
    (Point.SERVER_KV_CACHE_USAGE_MAX, KV_CACHE_USAGE),
)
SERVER_VIEW_COLUMNS: Final[tuple[str, ...]] = tuple(
    c for c, _ in _SERVER_MEANS + _SERVER_TOTALS + _SERVER_MAXIMA
)
"""``points.csv`` columns of the server's view: histogram means, counter totals, gauge maxima."""


def server_summary(
    server: pd.DataFrame | Sequence[Mapping[str, Any]],
    point_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """Server-side means, totals and gauge maxima over some points, from ``/metrics`` deltas.

    Deltas of every replica are added before dividing, so a mean over several replicas weighs
    each batch (or request) once. A gauge (KV-cache use) is only seen at the scrapes, so its
    figure is the largest value of those. What the deltas do not hold is absent, never zero:
    a server that does not export a figure leaves its column empty.

    Args:
        server: Delta rows (:class:`loadgen.results.Srv` columns), as a frame or row dicts.
        point_ids: Points to pool; ``None`` takes every row.

    Returns:
        :data:`SERVER_VIEW_COLUMNS` and :attr:`Stat.GPU_MEMORY_USED_BYTES` (largest GPU memory
        in use), each only where measured.
    """
    frame = server if isinstance(server, pd.DataFrame) else pd.DataFrame(list(server))
    if point_ids is not None and not frame.empty:
        frame = frame[frame[Srv.POINT_ID].isin(set(point_ids))]
    if frame.empty:
        return {}
    # Bucket rows carry an `le` label; only plain samples add up to sums, counts and totals.
    plain = frame[frame[Srv.LE].fillna("").astype(str) == ""] if Srv.LE in frame else frame
    totals = pd.to_numeric(plain[Srv.DELTA], errors="coerce").groupby(plain[Srv.METRIC]).sum()
    out: dict[str, float] = {}
    for col, metric in _SERVER_MEANS:
        s, c = totals.get(metric + "_sum"), totals.get(metric + "_count")
        if s is not None and c is not None and c > 0:
            out[col] = float(s) / float(c)
    for col, metric in _SERVER_TOTALS:
        if metric in totals.index:
            out[col] = float(totals[metric])
    for col, metric in _SERVER_MAXIMA:
        rows = frame[frame[Srv.METRIC] == metric]
        seen = pd.to_numeric(pd.concat([rows[Srv.BEFORE], rows[Srv.AFTER]]), errors="coerce")
        if seen.notna().any():
            out[col] = float(seen.max())
    mem = frame[frame[Srv.METRIC] == names.TOKENBOOTH_GPU_MEMORY_USED]
    if not mem.empty:
        out[Stat.GPU_MEMORY_USED_BYTES] = float(
            pd.to_numeric(mem[Srv.AFTER], errors="coerce").max()
        )
    return out


def turn_summary(requests: pd.DataFrame) -> pd.DataFrame:
    """TTFT by session turn, per point: ok rows, TTFT p50/p95 and mean prompt tokens per turn.

    Rows outside sessions (turn 0) and runs recorded before the ``turn`` column give an empty
    frame. Columns: point id, turn, :attr:`Stat.N_TTFT`, TTFT p50/p95, mean prompt tokens.
    """
    columns = [Col.POINT_ID, Col.TURN, Stat.N_TTFT, Point.TTFT_P50_S, Point.TTFT_P95_S]
    columns.append(Col.PROMPT_TOKENS)
    if Col.TURN not in requests.columns or requests.empty:
        return pd.DataFrame(columns=columns)
    ok = requests[requests[Col.OK].eq(True) & (pd.to_numeric(requests[Col.TURN]) > 0)]
    rows = []
    for (pid, turn), g in ok.groupby([Col.POINT_ID, Col.TURN], sort=True):
        ttft = finite(g[Col.TTFT_S])
        rows.append(
            {
                Col.POINT_ID: int(pid),
                Col.TURN: int(turn),
                Stat.N_TTFT: int(ttft.size),
                Point.TTFT_P50_S: percentile(ttft, 0.50),
                Point.TTFT_P95_S: percentile(ttft, 0.95),
                Col.PROMPT_TOKENS: float(pd.to_numeric(g[Col.PROMPT_TOKENS]).mean()),
            }
        )
    return pd.DataFrame(rows, columns=columns)
