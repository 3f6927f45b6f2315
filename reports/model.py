"""Capacity model: a batch-service queue fitted from the sweep, simulated for unmeasured loads.

Each replica is the service's dynamic batcher: requests queue, a free batch worker takes up to
``max_batch_size`` of them as soon as that many wait or ``max_batch_delay`` after the oldest
arrived, and the batch runs prefill then one decode step per token until its longest request is
done. The model fits, per base configuration (what one replica runs), how long a batch of ``b``
requests takes from the server's own metrics:

* prefill per batch ``= p0 + p1 b`` (``tokenbooth_batch_prefill_seconds`` against
  ``tokenbooth_batch_size``), and
* one decode step ``= s0 + s1 b`` (``tokenbooth_batch_decode_seconds`` divided by the expected
  longest output in a batch of ``b``, from the measured output-length distribution),

both by non-negative least squares over the measured points, plus the client-side overhead (client
TTFT minus server TTFT). Predictions replay that queue in a discrete-event simulation with
Poisson arrivals (or closed-loop users) spread over ``N`` replicas by the sweep's balancing rule,
over the same measured window as the sweep, and read p95 TTFT and throughput off the simulated
requests exactly as the analysis reads them off real ones.

Use :func:`fit` (data frames, as :class:`loadgen.results.RunDir` returns them),
:func:`fit_run_dir` or :func:`fit_analysis`; then :meth:`CapacityModel.predict` and
:meth:`CapacityModel.holdout_error`.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import nnls

from loadgen.results import Col, Point
from reports.analysis import Analysis, analyze
from reports.load import Rpt, Run, RunSpec, Slo, load_run, parse_spec, prepare_points

__all__ = [
    "ASSUMPTIONS",
    "CapacityModel",
    "Holdout",
    "Prediction",
    "ServiceTimes",
    "Window",
    "expected_max",
    "fit",
    "fit_analysis",
    "fit_run_dir",
]

ASSUMPTIONS: Final[tuple[str, ...]] = (
    "Static dynamic batching as in service/batcher.py: a batch forms when max_batch_size requests "
    "wait or max_batch_delay after the oldest arrived, only when a batch worker is free, and "
    "holds its worker until its longest request finishes.",
    "Batch service time is linear in batch size (prefill p0 + p1·b; decode step s0 + s1·b), "
    "fitted by non-negative least squares on the per-point means of the server's batch metrics; "
    "prompt lengths and sampling options are those of the sweep's workload.",
    "Output lengths are drawn from the measured completion-token distribution; a batch decodes "
    "for as many steps as its longest request.",
    "The batch workers of one replica run independently; their contention for the replica's "
    "threads is whatever it was in the fitted points.",
    "Replicas are independent and identical; requests are spread by the sweep's balancing rule. "
    "On a CPU host, replicas x batch workers x intra threads beyond the machine's cores slow "
    "every step proportionally (GPU replicas are assumed not to contend).",
    "Open-loop predictions use Poisson arrivals; closed-loop ones use zero think time. The client "
    "adds a constant overhead (median of client minus server TTFT). Errors and timeouts are not "
    "modelled: predicted error rate is 0.",
    "Predictions measure the way the harness does: requests sent after the warm-up and before "
    "the end of the window (at most max_requests) count, in-flight ones are drained, and "
    "throughput is their number over first send to last finish. Closed-loop users start within "
    "Locust's 10 ms spawn interval or all at once, whichever reproduces the measured batch "
    "sizes (users that start apart can settle into separate batches for good).",
)

_EPS: Final = 1e-12
LOCUST_START_SPREAD_S: Final = 0.01
"""Locust spawns a point's users at 100 x users per second: all within 10 ms."""
START_SPREAD_CANDIDATES: Final[tuple[float, ...]] = (LOCUST_START_SPREAD_S, 0.0)
_SIM_MAX_REQUESTS: Final = 4000
_SIM_TARGET_SAMPLES: Final = 600
_DEFAULT_DURATION_S: Final = 30.0
_BISECT_STEPS: Final = 8

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Window:
    """The measured window of one point: warm-up, then ``duration_s`` or ``max_requests``."""

    duration_s: float = _DEFAULT_DURATION_S
    warmup_s: float = 0.0
    max_requests: int | None = None
    request_timeout_s: float = 120.0

    @classmethod
    def from_spec(cls, spec: RunSpec | None) -> Window:
        """The spec's window (defaults where it gives none)."""
        if spec is None:
            return cls()
        return cls(
            duration_s=spec.duration_s or _DEFAULT_DURATION_S,
            warmup_s=spec.warmup_s,
            max_requests=spec.max_requests,
            request_timeout_s=spec.request_timeout_s,
        )


def expected_max(tokens: FloatArray, b: float) -> float:
    """Expected largest of ``b`` draws (with replacement) from an empirical distribution.

    Args:
        tokens: Samples (e.g. completion tokens per request).
        b: Draws; a fractional count interpolates linearly between its neighbours.

    Returns:
        ``E[max]``; NaN without samples.
    """
    x = np.sort(np.asarray(tokens, dtype=float))
    n = x.size
    if n == 0:
        return math.nan
    if b <= 1:
        return float(x.mean())
    cdf = np.arange(1, n + 1) / n
    prev = np.arange(0, n) / n

    def em(k: int) -> float:
        return float(np.sum(x * (cdf**k - prev**k)))

    lo = math.floor(b)
    frac = b - lo
    return em(lo) if frac == 0 else (1 - frac) * em(lo) + frac * em(lo + 1)


@dataclass(frozen=True)
class ServiceTimes:
    """Fitted batch service times of one base configuration (what one replica runs).

    Attributes:
        base_config: Its label.
        max_batch_size: Batcher limit.
        max_batch_delay_s: Batcher delay.
        batch_workers: Batches run in parallel per replica.
        intra_threads: Threads per batch.
        prefill_s: ``(p0, p1)``: prefill of a batch of ``b`` takes ``p0 + p1 b``.
        step_s: ``(s0, s1)``: one decode step of a batch of ``b`` takes ``s0 + s1 b``.
        output_tokens: Measured completion tokens per request (sample).
        client_overhead_s: Client TTFT minus server TTFT.
        fit_points: Points the fit used.
        fit_replicas: Replica counts of those points.
        batch_size_range: Smallest and largest mean batch size seen.
        prefill_rel_rmse: Fit residual relative to the mean prefill.
        step_rel_rmse: Fit residual relative to the mean step.
        notes: Fit caveats.
        user_start_spread_s: Closed loop: users start evenly over this long. Calibrated on the
            measured batch sizes: users that start together share batches for good, users
            spread over Locust's spawn interval settle into separate groups.
    """

    base_config: str
    max_batch_size: int
    max_batch_delay_s: float
    batch_workers: int
    intra_threads: int
    prefill_s: tuple[float, float]
    step_s: tuple[float, float]
    output_tokens: tuple[int, ...]
    client_overhead_s: float
    fit_points: int
    fit_replicas: tuple[int, ...]
    batch_size_range: tuple[float, float]
    prefill_rel_rmse: float
    step_rel_rmse: float
    notes: tuple[str, ...] = ()
    user_start_spread_s: float = LOCUST_START_SPREAD_S

    def batch_time_s(self, b: int) -> float:
        """Expected time a batch of ``b`` holds its worker, without contention."""
        steps = expected_max(np.asarray(self.output_tokens, dtype=float), b) - 1
        return (
            self.prefill_s[0]
            + self.prefill_s[1] * b
            + max(steps, 0.0) * (self.step_s[0] + self.step_s[1] * b)
        )


@dataclass(frozen=True)
class Prediction:
    """Predicted behaviour of ``replicas`` replicas of one configuration at one load.

    Attributes:
        config: Base configuration label.
        replicas: Replica count.
        rate_rps: Offered Poisson rate (NaN for closed loop).
        concurrency: Closed-loop users (NaN for open loop).
        throughput_rps: Requests/s finishing inside the window.
        output_tokens_per_s: Output tokens/s finishing inside the window.
        ttft_p95_s: Client TTFT p95.
        ttft_p50_s: Client TTFT median.
        tpot_p95_s: Time per output token p95.
        e2e_p95_s: End-to-end p95.
        mean_batch_size: Mean executed batch size.
        saturated: Open loop only: the replicas fell behind the offered rate.
        samples: Simulated requests behind the percentiles.
    """

    config: str
    replicas: int
    rate_rps: float
    concurrency: float
    throughput_rps: float
    output_tokens_per_s: float
    ttft_p95_s: float
    ttft_p50_s: float
    tpot_p95_s: float
    e2e_p95_s: float
    mean_batch_size: float
    saturated: bool
    samples: int

    def meets(self, slo: Slo) -> bool:
        """Whether the prediction meets the SLO's latency terms and keeps up with its load."""
        checks = (
            (slo.ttft_p95_s, self.ttft_p95_s),
            (slo.tpot_p95_s, self.tpot_p95_s),
            (slo.e2e_p95_s, self.e2e_p95_s),
        )
        if self.samples == 0 or self.saturated:
            return False
        return all(limit is None or value <= limit for limit, value in checks)


@dataclass(frozen=True)
class Holdout:
    """Prediction error on measured points the fit did not see.

    Attributes:
        table: One row per predicted point: kind (``leave-one-out`` or ``cross-replica``),
            configuration, replicas, load, measured and predicted throughput and TTFT p95, and
            their relative errors.
        throughput_mape: Mean absolute relative throughput error over all rows.
        ttft_p95_mape: Mean absolute relative TTFT p95 error over all rows.
        by_kind: ``{kind: (throughput MAPE, TTFT p95 MAPE, rows)}``.
    """

    table: pd.DataFrame
    throughput_mape: float
    ttft_p95_mape: float
    by_kind: dict[str, tuple[float, float, int]]


# ------------------------------------------------------------------------------ simulation


@dataclass
class _Sim:
    """Mutable state of one simulated window."""

    send: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    finish: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)


_ARRIVE, _DEADLINE, _FINISH, _BATCH_DONE, _SEND = range(5)


def _simulate(
    st: ServiceTimes,
    replicas: int,
    slowdown: float,
    *,
    rate: float | None,
    concurrency: int | None,
    window: Window,
    balance: str,
    seed: int,
    arrival: str = "poisson",
) -> tuple[_Sim, list[int], float]:
    """Replay the batch queue over one point's window, the way the harness measures it.

    Requests sent in ``[warmup, warmup + duration)`` (at most ``max_requests`` of them) are
    measured; sending stops at the end of the window and measured requests in flight are
    drained, up to the request timeout. Returns the state, the measured requests that finished
    in time, and the span from the first measured send to the last measured finish.
    """
    rng = np.random.default_rng(seed)
    cap = _SIM_MAX_REQUESTS if window.max_requests is None else window.max_requests
    cap = min(cap, _SIM_MAX_REQUESTS)
    start, end = window.warmup_s, window.warmup_s + window.duration_s
    horizon = end + window.request_timeout_s
    big_b, delay, workers = st.max_batch_size, st.max_batch_delay_s, st.batch_workers
    p0, p1 = (v * slowdown for v in st.prefill_s)
    s0, s1 = (v * slowdown for v in st.step_s)
    token_pool = np.asarray(st.output_tokens, dtype=int)

    def draws() -> Iterator[int]:
        while True:
            yield from (int(v) for v in rng.choice(token_pool, size=4096))

    token_draws = draws()
    overhead = st.client_overhead_s

    sim = _Sim()
    arrive: list[float] = []
    heap: list[tuple[float, int, int, int]] = []
    seq = itertools.count()
    queues: list[deque[int]] = [deque() for _ in range(replicas)]
    free = [workers] * replicas
    outstanding = [0] * replicas
    deadline_at = [math.inf] * replicas
    owner: list[int] = []
    robin = itertools.count()
    measured: list[int] = []

    def push(t: float, kind: int, data: int) -> None:
        heapq.heappush(heap, (t, next(seq), kind, data))

    def sending(t: float) -> bool:
        return t < end and len(measured) < cap

    def new_request(t: float) -> None:
        i = len(sim.send)
        sim.send.append(t)
        sim.first.append(math.nan)
        sim.finish.append(math.nan)
        sim.tokens.append(int(next(token_draws)))
        arrive.append(t + overhead)
        if t >= start:
            measured.append(i)
        if replicas == 1:
            r = 0
        elif balance == "round_robin":
            r = next(robin) % replicas
        else:  # least outstanding; ties rotate so equal replicas share evenly
            off = next(robin) % replicas
            r = off
            for k in range(1, replicas):
                cand = (off + k) % replicas
                if outstanding[cand] < outstanding[r]:
                    r = cand
        owner.append(r)
        outstanding[r] += 1
        push(t + overhead, _ARRIVE, i)

    def dispatch(r: int, t: float) -> None:
        q = queues[r]
        while free[r] > 0 and q:
            head = arrive[q[0]]
            if len(q) >= big_b or t >= head + delay - _EPS:
                n = min(len(q), big_b)
                batch = [q.popleft() for _ in range(n)]
                free[r] -= 1
                t_first = t + p0 + p1 * n
                step = s0 + s1 * n
                longest = 0
                for i in batch:
                    sim.first[i] = t_first
                    sim.finish[i] = t_first + (sim.tokens[i] - 1) * step
                    longest = max(longest, sim.tokens[i])
                    push(sim.finish[i], _FINISH, i)
                if start <= t < end:
                    sim.batch_sizes.append(n)
                push(t_first + (longest - 1) * step, _BATCH_DONE, r)
            else:
                due = head + delay
                if deadline_at[r] != due:
                    deadline_at[r] = due
                    push(due, _DEADLINE, r)
                break

    def gap() -> float:
        assert rate is not None
        return 1.0 / rate if arrival == "constant" else float(rng.exponential(1.0 / rate))

    if concurrency is not None:
        for k in range(concurrency):
            push(k * st.user_start_spread_s / concurrency, _SEND, -1)
    elif rate is not None and rate > 0:
        push(gap() if arrival == "poisson" else float(rng.uniform(0.0, 1.0 / rate)), _SEND, -1)

    while heap:
        t, _, kind, data = heapq.heappop(heap)
        if t > horizon:
            break
        if kind == _SEND:
            if sending(t):
                new_request(t)
                if concurrency is None:
                    push(t + gap(), _SEND, -1)
        elif kind == _ARRIVE:
            r = owner[data]
            queues[r].append(data)
            dispatch(r, t)
        elif kind in (_DEADLINE, _BATCH_DONE):
            if kind == _BATCH_DONE:
                free[data] += 1
            dispatch(data, t)
        else:  # _FINISH
            outstanding[owner[data]] -= 1
            if concurrency is not None:
                push(t, _SEND, -1)
    timeout = window.request_timeout_s
    done = [
        i
        for i in measured
        if math.isfinite(sim.finish[i]) and sim.finish[i] - sim.send[i] <= timeout
    ]
    if not done:
        return sim, done, _EPS
    span = max(sim.finish[i] for i in done) - min(sim.send[i] for i in done)
    return sim, done, max(span, _EPS)


def _slowdown(replicas: int, workers: int, threads: int, device: str, cores: int | None) -> float:
    if device != "cpu" or not cores:
        return 1.0
    return max(1.0, replicas * workers * max(threads, 1) / cores)


# ------------------------------------------------------------------------------ fitting


def _nnls_line(x: FloatArray, y: FloatArray) -> tuple[float, float, float, bool]:
    """Non-negative ``y = a + b x``; (a, b, relative RMSE, whether a slope was identifiable)."""
    if x.size >= 2 and float(x.max() - x.min()) >= 0.5:
        design = np.column_stack([np.ones_like(x), x])
        coef, _ = nnls(design, y)
        a, b = float(coef[0]), float(coef[1])
        slope_ok = True
    else:
        a, b, slope_ok = float(y.mean()), 0.0, False
    resid = y - (a + b * x)
    mean = float(y.mean())
    rel = float(np.sqrt(np.mean(resid**2)) / mean) if mean > 0 else math.nan
    return a, b, rel, slope_ok


def _num(row: pd.Series, col: str, default: float = math.nan) -> float:
    try:
        v = float(row.get(col, default))
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def _fit_service(
    base: str,
    pts: pd.DataFrame,
    tokens: FloatArray,
    device: str,
    cores: int | None,
) -> ServiceTimes | str:
    """Fit one base configuration, or say why it cannot be fitted."""
    need = (Point.SERVER_BATCH_SIZE_MEAN, Point.SERVER_PREFILL_MEAN_S, Point.SERVER_DECODE_MEAN_S)
    usable = pts.dropna(subset=[c for c in need if c in pts.columns])
    if any(c not in pts.columns for c in need) or usable.empty:
        return (
            "server batch metrics (batch size, prefill and decode time per batch) are missing, "
            "so batch service time cannot be fitted"
        )
    if tokens.size == 0:
        return "no successful requests with completion-token counts"
    first = usable.iloc[0]
    workers = int(_num(first, Point.BATCH_WORKERS, 1))
    threads = int(_num(first, Point.INTRA_THREADS, 1))
    bs, pf, step = [], [], []
    for _, row in usable.iterrows():
        b = float(row[Point.SERVER_BATCH_SIZE_MEAN])
        slow = _slowdown(int(row[Point.REPLICAS]), workers, threads, device, cores)
        steps = expected_max(tokens, b) - 1
        bs.append(b)
        pf.append(float(row[Point.SERVER_PREFILL_MEAN_S]) / slow)
        step.append(float(row[Point.SERVER_DECODE_MEAN_S]) / slow / steps if steps > 0 else 0.0)
    x = np.asarray(bs)
    p0, p1, p_err, p_slope = _nnls_line(x, np.asarray(pf))
    s0, s1, s_err, _ = _nnls_line(x, np.asarray(step))
    notes = []
    if not p_slope:
        notes.append(
            "mean batch size hardly varied across points: service time taken as independent "
            "of batch size"
        )
    has_ttft = Rpt.TTFT_MEAN_S in usable.columns and Point.SERVER_TTFT_MEAN_S in usable.columns
    overhead_rows = (
        usable.dropna(subset=[Rpt.TTFT_MEAN_S, Point.SERVER_TTFT_MEAN_S])
        if has_ttft
        else usable[:0]
    )
    if overhead_rows.empty:
        overhead = 0.0
        notes.append("no server TTFT: client overhead taken as 0")
    else:
        diff = overhead_rows[Rpt.TTFT_MEAN_S] - overhead_rows[Point.SERVER_TTFT_MEAN_S]
        overhead = max(0.0, float(diff.median()))
    sample = tokens if tokens.size <= 5000 else np.random.default_rng(0).choice(tokens, 5000)
    return ServiceTimes(
        base_config=base,
        max_batch_size=int(_num(first, Point.MAX_BATCH_SIZE, 1)),
        max_batch_delay_s=_num(first, Point.MAX_BATCH_DELAY_MS, 0.0) / 1000.0,
        batch_workers=workers,
        intra_threads=threads,
        prefill_s=(p0, p1),
        step_s=(s0, s1),
        output_tokens=tuple(int(t) for t in sample),
        client_overhead_s=overhead,
        fit_points=len(usable),
        fit_replicas=tuple(sorted({int(r) for r in usable[Point.REPLICAS]})),
        batch_size_range=(float(x.min()), float(x.max())),
        prefill_rel_rmse=p_err,
        step_rel_rmse=s_err,
        notes=tuple(notes),
    )


def _base_of(config: str) -> str:
    """``int8 b8 d5ms w1 t1 ×2`` -> ``int8 b8 d5ms w1 t1``; a base label passes unchanged."""
    head = config.split(" · ")[0]
    parts = head.rsplit(" ×", 1)
    return parts[0] if len(parts) == 2 and parts[1].isdigit() else head


@dataclass
class CapacityModel:
    """Fitted batch-service queues, one per base configuration, and their predictions.

    Attributes:
        services: Fitted service times per base configuration label.
        unfitted: Base configurations that could not be fitted, with the reason.
        window: The measured window predictions replay.
        balance: ``least_outstanding`` or ``round_robin``.
        device: ``cpu`` or ``cuda`` (from the run's environment).
        cpu_cores: The host's cores (for CPU contention), if known.
        points: The per-point statistics the model was fitted from (for hold-out checks).
        fit_replicas: Replica counts the fit was restricted to (``None``: all).
        seed: Simulation seed.
        replications: Independent simulated windows pooled per prediction.
    """

    services: dict[str, ServiceTimes]
    unfitted: dict[str, str]
    window: Window
    balance: str
    device: str
    cpu_cores: int | None
    points: pd.DataFrame
    fit_replicas: tuple[int, ...] | None = None
    seed: int = 0
    replications: int = 1
    _holdout: Holdout | None = field(default=None, repr=False)
    _cache: dict[tuple[Any, ...], Prediction] = field(default_factory=dict, repr=False)

    @property
    def configs(self) -> list[str]:
        """Fitted base configuration labels."""
        return sorted(self.services)

    @property
    def assumptions(self) -> tuple[str, ...]:
        """What the model takes for granted, in words (shown in the report)."""
        return ASSUMPTIONS

    def service(self, config: str) -> ServiceTimes:
        """The fitted service times of a configuration (base label or full label).

        Raises:
            KeyError: The configuration was not fitted; the message says why.
        """
        base = _base_of(config)
        if base in self.services:
            return self.services[base]
        reason = self.unfitted.get(base, "not in this run")
        raise KeyError(f"no capacity model for {config!r}: {reason}")

    def slowdown(self, config: str, replicas: int) -> float:
        """Contention factor applied to every batch of ``replicas`` replicas."""
        st = self.service(config)
        return _slowdown(replicas, st.batch_workers, st.intra_threads, self.device, self.cpu_cores)

    def predict(
        self,
        config: str,
        replicas: int,
        rate: float | None = None,
        *,
        concurrency: int | None = None,
        arrival: str = "poisson",
    ) -> Prediction:
        """Predict throughput and latency of ``replicas`` replicas at one load.

        Args:
            config: Base configuration label (or a full label with ``×N``).
            replicas: Replica count (need not have been measured).
            rate: Offered requests/s (open loop).
            concurrency: Closed-loop users; give this or ``rate``.
            arrival: Open-loop arrivals, ``poisson`` or ``constant``.

        Returns:
            The prediction.

        Raises:
            KeyError: The configuration was not fitted.
            ValueError: Neither or both of ``rate`` and ``concurrency`` were given.
        """
        if (rate is None) == (concurrency is None):
            raise ValueError("give exactly one of rate and concurrency")
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        st = self.service(config)
        arrival = "constant" if arrival == "constant" else "poisson"
        key = (st.base_config, replicas, rate, concurrency, arrival)
        if key in self._cache:
            return self._cache[key]
        slow = self.slowdown(config, replicas)
        reps = self.replications
        if rate is not None and rate > 0:
            # Enough simulated requests that the arrival process's own noise stays small.
            expected = rate * self.window.duration_s
            reps = min(max(reps, math.ceil(_SIM_TARGET_SAMPLES / max(expected, 1.0))), 8)
        sends: list[float] = []
        firsts: list[float] = []
        finishes: list[float] = []
        toks: list[int] = []
        batch_sizes: list[int] = []
        thr, tps = [], []
        for rep in range(reps):
            sim, measured, span = _simulate(
                st,
                replicas,
                slow,
                rate=rate,
                concurrency=concurrency,
                window=self.window,
                balance=self.balance,
                seed=self.seed + rep,
                arrival=arrival,
            )
            idx = np.asarray(measured, dtype=int)
            send = np.asarray(sim.send)[idx] if idx.size else np.empty(0)
            tok = np.asarray(sim.tokens)[idx] if idx.size else np.empty(0, dtype=int)
            sends.extend(send)
            firsts.extend(np.asarray(sim.first)[idx] if idx.size else [])
            finishes.extend(np.asarray(sim.finish)[idx] if idx.size else [])
            toks.extend(tok)
            batch_sizes.extend(sim.batch_sizes)
            thr.append(idx.size / span)
            tps.append(float(tok.sum()) / span)
        s, f, e, k = (np.asarray(v, dtype=float) for v in (sends, firsts, finishes, toks))
        ttft, e2e = f - s, e - s
        multi = k > 1
        tpot = (e[multi] - f[multi]) / (k[multi] - 1)
        throughput = float(np.mean(thr))

        def q(v: FloatArray, p: float) -> float:
            return float(np.quantile(v, p)) if v.size else math.nan

        pred = Prediction(
            config=st.base_config,
            replicas=replicas,
            rate_rps=math.nan if rate is None else float(rate),
            concurrency=math.nan if concurrency is None else float(concurrency),
            throughput_rps=throughput,
            output_tokens_per_s=float(np.mean(tps)),
            ttft_p95_s=q(ttft, 0.95),
            ttft_p50_s=q(ttft, 0.50),
            tpot_p95_s=q(tpot, 0.95),
            e2e_p95_s=q(e2e, 0.95),
            mean_batch_size=float(np.mean(batch_sizes)) if batch_sizes else math.nan,
            saturated=rate is not None and throughput < 0.95 * rate,
            samples=int(s.size),
        )
        self._cache[key] = pred
        return pred

    def max_throughput(self, config: str, replicas: int) -> float:
        """Requests/s of ``replicas`` replicas running full batches back to back (an upper bound).

        Args:
            config: Configuration label.
            replicas: Replica count.

        Returns:
            ``replicas x workers x max_batch_size / (batch time x contention)``.
        """
        st = self.service(config)
        b = st.max_batch_size
        per_batch = st.batch_time_s(b) * self.slowdown(config, replicas)
        return replicas * st.batch_workers * b / per_batch if per_batch > 0 else math.inf

    def slo_capacity(self, config: str, replicas: int, slo: Slo) -> float:
        """Highest Poisson rate whose prediction meets the SLO (bisection on the simulation).

        Args:
            config: Configuration label.
            replicas: Replica count.
            slo: The objective.

        Returns:
            Requests/s; 0 when even a trickle misses it.
        """
        lo, hi = 0.0, self.max_throughput(config, replicas)
        if not math.isfinite(hi):
            return math.inf
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2
            if self.predict(config, replicas, _round_rate(mid)).meets(slo):
                lo = mid
            else:
                hi = mid
        return lo

    def min_replicas(
        self, config: str, target_rps: float, slo: Slo, *, max_replicas: int = 64
    ) -> int | None:
        """Fewest replicas whose predicted p95s meet the SLO at ``target_rps``.

        Args:
            config: Configuration label.
            target_rps: Poisson load to carry.
            slo: The objective.
            max_replicas: Search limit.

        Returns:
            The replica count, or ``None`` when none up to the limit does.
        """
        rate = _round_rate(target_rps)
        for n in range(1, max_replicas + 1):
            if self.max_throughput(config, n) < target_rps:
                continue  # cannot carry the load even with full batches
            if self.predict(config, n, rate).meets(slo):
                return n
        return None

    def with_points(self, config_points: pd.DataFrame) -> CapacityModel:
        """A model refitted on other points of the same run (same window, host and seed)."""
        return _fit_points(
            config_points,
            window=self.window,
            balance=self.balance,
            device=self.device,
            cpu_cores=self.cpu_cores,
            seed=self.seed,
            replications=self.replications,
        )

    def holdout_error(self) -> Holdout:
        """Prediction error on measured points held out of the fit.

        Two checks per base configuration: leave-one-out (refit without each valid point and
        predict it) and cross-replica (fit on the smallest replica count only and predict every
        larger one, the way unmeasured replica counts are predicted).

        Returns:
            The errors; cached after the first call.
        """
        if self._holdout is not None:
            return self._holdout
        rows: list[dict[str, Any]] = []
        pts = self.points
        for base in self.configs:
            mine = pts[pts[Rpt.BASE_CONFIG] == base]
            for pid in mine[Point.POINT_ID]:
                rest = mine[mine[Point.POINT_ID] != pid]
                target = mine[mine[Point.POINT_ID] == pid].iloc[0]
                if rest.empty:
                    continue
                refit = self.with_points(rest)
                if base in refit.services:
                    rows.append(_holdout_row(refit, base, target, "leave-one-out"))
            smallest = int(mine[Point.REPLICAS].min())
            larger = mine[mine[Point.REPLICAS] > smallest]
            if not larger.empty:
                refit = self.with_points(mine[mine[Point.REPLICAS] == smallest])
                if base in refit.services:
                    for _, target in larger.iterrows():
                        rows.append(_holdout_row(refit, base, target, "cross-replica"))
        table = pd.DataFrame(rows)
        by_kind: dict[str, tuple[float, float, int]] = {}
        if table.empty:
            self._holdout = Holdout(table, math.nan, math.nan, by_kind)
            return self._holdout
        for kind, g in table.groupby(Rpt.HOLDOUT_KIND):
            by_kind[str(kind)] = (
                float(g[Rpt.THROUGHPUT_REL_ERROR].abs().mean()),
                float(g[Rpt.TTFT_P95_REL_ERROR].abs().mean()),
                len(g),
            )
        self._holdout = Holdout(
            table,
            float(table[Rpt.THROUGHPUT_REL_ERROR].abs().mean()),
            float(table[Rpt.TTFT_P95_REL_ERROR].abs().mean()),
            by_kind,
        )
        return self._holdout


def _round_rate(rate: float) -> float:
    """Cache-friendly rate (4 significant digits)."""
    return float(f"{rate:.4g}")


def _predict_point(model: CapacityModel, base: str, row: pd.Series) -> Prediction:
    level = float(row[Point.LOAD_LEVEL])
    replicas = int(row[Point.REPLICAS])
    if str(row[Point.LOAD_MODE]) == "concurrency":
        return model.predict(base, replicas, concurrency=max(1, round(level)))
    return model.predict(base, replicas, level, arrival=str(row[Point.ARRIVAL]))


def _rel(pred: float, meas: float) -> float:
    return (pred - meas) / meas if meas and math.isfinite(meas) else math.nan


def _holdout_row(model: CapacityModel, base: str, row: pd.Series, kind: str) -> dict[str, Any]:
    pred = _predict_point(model, base, row)
    thr, ttft = float(row[Point.ACHIEVED_RPS]), float(row[Point.TTFT_P95_S])
    return {
        Rpt.HOLDOUT_KIND: kind,
        Rpt.BASE_CONFIG: base,
        Point.POINT_ID: int(row[Point.POINT_ID]),
        Point.REPLICAS: int(row[Point.REPLICAS]),
        Point.LOAD_MODE: row[Point.LOAD_MODE],
        Point.LOAD_LEVEL: float(row[Point.LOAD_LEVEL]),
        Rpt.MEASURED_RPS: thr,
        Rpt.PREDICTED_RPS: pred.throughput_rps,
        Rpt.THROUGHPUT_REL_ERROR: _rel(pred.throughput_rps, thr),
        Rpt.MEASURED_TTFT_P95_S: ttft,
        Rpt.PREDICTED_TTFT_P95_S: pred.ttft_p95_s,
        Rpt.TTFT_P95_REL_ERROR: _rel(pred.ttft_p95_s, ttft),
    }


def _calibrate_start(
    st: ServiceTimes,
    points: pd.DataFrame,
    window: Window,
    balance: str,
    device: str,
    cpu_cores: int | None,
    seed: int,
) -> ServiceTimes:
    """Pick the closed-loop start spread whose simulated batch sizes match the measured ones."""
    closed = points[
        (points[Point.LOAD_MODE] == "concurrency") & points[Point.SERVER_BATCH_SIZE_MEAN].notna()
    ]
    if closed.empty:
        return st
    best: tuple[float, float] | None = None
    for spread in START_SPREAD_CANDIDATES:
        cand = replace(st, user_start_spread_s=spread)
        err = 0.0
        for _, row in closed.iterrows():
            n = int(row[Point.REPLICAS])
            sim, _, _ = _simulate(
                cand,
                n,
                _slowdown(n, st.batch_workers, st.intra_threads, device, cpu_cores),
                rate=None,
                concurrency=max(1, round(float(row[Point.LOAD_LEVEL]))),
                window=window,
                balance=balance,
                seed=seed,
            )
            simulated = float(np.mean(sim.batch_sizes)) if sim.batch_sizes else math.nan
            measured = float(row[Point.SERVER_BATCH_SIZE_MEAN])
            if simulated > 0 and measured > 0:
                err += abs(math.log(simulated / measured))
        if best is None or err < best[1] - 1e-9:
            best = (spread, err)
    assert best is not None
    return replace(st, user_start_spread_s=best[0])


def _fit_points(
    points: pd.DataFrame,
    *,
    window: Window,
    balance: str,
    device: str,
    cpu_cores: int | None,
    seed: int,
    replications: int,
    fit_replicas: tuple[int, ...] | None = None,
    tokens_by_base: Mapping[str, FloatArray] | None = None,
) -> CapacityModel:
    services: dict[str, ServiceTimes] = {}
    unfitted: dict[str, str] = {}
    for base, group in points.groupby(Rpt.BASE_CONFIG, sort=True):
        if tokens_by_base is not None and str(base) in tokens_by_base:
            tokens = tokens_by_base[str(base)]
        else:
            tokens = _tokens_from_points(group)
        result = _fit_service(str(base), group, tokens, device, cpu_cores)
        if isinstance(result, str):
            unfitted[str(base)] = result
        else:
            services[str(base)] = _calibrate_start(
                result, group, window, balance, device, cpu_cores, seed
            )
    return CapacityModel(
        services=services,
        unfitted=unfitted,
        window=window,
        balance=balance,
        device=device,
        cpu_cores=cpu_cores,
        points=points,
        fit_replicas=fit_replicas,
        seed=seed,
        replications=replications,
    )


_TOKENS_COLUMN: Final = "_completion_tokens"


def _tokens_from_points(points: pd.DataFrame) -> FloatArray:
    if _TOKENS_COLUMN in points.columns:
        parts = [np.asarray(v, dtype=float) for v in points[_TOKENS_COLUMN] if len(v)]
        if parts:
            return np.concatenate(parts)
    if Rpt.COMPLETION_TOKENS_MEAN in points.columns:
        mean = pd.to_numeric(points[Rpt.COMPLETION_TOKENS_MEAN], errors="coerce").dropna()
    else:  # no raw rows: the harness's summary still gives output tokens per request
        tps = pd.to_numeric(points[Point.OUTPUT_TOKENS_PER_S], errors="coerce")
        rps = pd.to_numeric(points[Point.ACHIEVED_RPS], errors="coerce")
        mean = (tps / rps.where(rps > 0)).dropna()
    return np.asarray([max(1, round(float(mean.mean())))]) if len(mean) else np.empty(0)


def _environment_device(environment: Mapping[str, Any]) -> tuple[str, int | None]:
    gpu = environment.get("gpu") or {}
    device = "cuda" if isinstance(gpu, Mapping) and gpu.get("available") else "cpu"
    machine = environment.get("machine") or {}
    cores = machine.get("cpu_count") if isinstance(machine, Mapping) else None
    return device, int(cores) if cores else None


def fit_analysis(
    analysis: Analysis,
    *,
    fit_replicas: Iterable[int] | None = None,
    seed: int = 0,
    replications: int = 1,
) -> CapacityModel:
    """Fit the capacity model from an analysed run (valid points only).

    Args:
        analysis: The run's analysis.
        fit_replicas: Use only points with these replica counts (e.g. ``[1]`` to predict
            two replicas from one); ``None`` uses every valid point.
        seed: Simulation seed.
        replications: Simulated windows pooled per prediction.

    Returns:
        The model (configurations without server batch metrics are listed in ``unfitted``).
    """
    run = analysis.run
    pts = analysis.points[analysis.points[Point.VALID]].copy()
    keep = None if fit_replicas is None else tuple(sorted(set(fit_replicas)))
    if keep is not None:
        pts = pts[pts[Point.REPLICAS].isin(keep)]
    tokens: dict[int, FloatArray] = {}
    if not run.requests.empty:
        ok = run.requests[run.requests[Col.OK].fillna(False).astype(bool)]
        for pid, g in ok.groupby(Col.POINT_ID):
            vals = pd.to_numeric(g[Col.COMPLETION_TOKENS], errors="coerce").dropna()
            tokens[int(pid)] = vals.to_numpy(dtype=float)
    pts[_TOKENS_COLUMN] = [tokens.get(int(p), np.empty(0)) for p in pts[Point.POINT_ID]]
    device, cores = _environment_device(run.environment)
    return _fit_points(
        pts.reset_index(drop=True),
        window=Window.from_spec(run.spec),
        balance=run.spec.balance,
        device=device,
        cpu_cores=cores,
        seed=seed,
        replications=replications,
        fit_replicas=keep,
    )


def fit(
    points_df: pd.DataFrame,
    requests_df: pd.DataFrame,
    server_df: pd.DataFrame,
    *,
    spec: RunSpec | str | None = None,
    environment: Mapping[str, Any] | None = None,
    fit_replicas: Iterable[int] | None = None,
    seed: int = 0,
) -> CapacityModel:
    """Fit the capacity model from a run's frames (as :class:`loadgen.results.RunDir` reads them).

    Args:
        points_df: ``RunDir.points()``.
        requests_df: ``RunDir.requests()``.
        server_df: ``RunDir.server()``.
        spec: The run's spec (text or parsed); sets the window, balancing and validity rules.
        environment: ``RunDir.environment()``; sets the device and core count.
        fit_replicas: Use only these replica counts (``None``: all).
        seed: Simulation seed.

    Returns:
        The model.
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed is None:
        parsed = parse_spec("")
    run = Run(
        path=Path("."),
        spec=parsed,
        environment=dict(environment or {}),
        points=prepare_points(points_df),
        requests=requests_df,
        server=server_df,
    )
    return fit_analysis(analyze(run, n_resamples=0), fit_replicas=fit_replicas, seed=seed)


def fit_run_dir(
    path: Path | str, *, fit_replicas: Iterable[int] | None = None, seed: int = 0
) -> CapacityModel:
    """Fit the capacity model straight from a run directory.

    Args:
        path: The run directory.
        fit_replicas: Use only these replica counts (``None``: all).
        seed: Simulation seed.

    Returns:
        The model.
    """
    return fit_analysis(
        analyze(load_run(path), n_resamples=0), fit_replicas=fit_replicas, seed=seed
    )
