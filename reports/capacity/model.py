"""The capacity model: fitted batch-service queues, one per base configuration, and their
predictions for replica counts and loads the sweep did not measure, checked on held-out points.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd

from loadgen.results import Point
from loadgen.spec import SLOSpec
from reports.capacity.fit import calibrate_start, fit_service, tokens_from_points
from reports.capacity.host import Host, busy_weighted
from reports.capacity.results import Holdout, Prediction, ServiceTimes, Window
from reports.capacity.simulate import Sim, simulate
from reports.capacity.steps import FloatArray
from reports.load import Rpt
from service.settings import (
    ADAPTIVE_HOLD_FRACTION,
    ADAPTIVE_POLICY,
    RECENT_BATCHES,
    TRITON_POLICY,
)

__all__ = ["ASSUMPTIONS", "CapacityModel", "fit_points"]

ASSUMPTIONS: Final[tuple[str, ...]] = (
    "Static dynamic batching as in service/batcher.py, under each configuration's batch policy. "
    f"A batch forms when max_batch_size requests wait or, with fewer, under {TRITON_POLICY!r} "
    f"max_batch_delay after the oldest arrived, and under {ADAPTIVE_POLICY!r} once no request "
    "has joined for max_batch_delay but no later than the larger of max_batch_delay and "
    f"{ADAPTIVE_HOLD_FRACTION:.0%} of the replica's mean batch duration over its last "
    f"{RECENT_BATCHES} batches after the oldest; when more wait than fit, {ADAPTIVE_POLICY!r} "
    "takes the oldest and those with the closest prompt lengths (first come, first served "
    "where the run recorded no prompt lengths). Either way a batch forms only when a batch "
    "worker is free, and holds its worker until its last request finishes (no continuous "
    "batching).",
    "CTranslate2's generate_batch prefills the prompts up to the shortest one, then forces the "
    "longer prompts' remaining tokens through ordinary decode steps: a request's first token "
    "comes (its prompt - the batch's shortest prompt) steps after the prefill, its last one "
    "(output - 1) steps later, and it stops costing compute after that. Prompt and output "
    "lengths are drawn as the measured pairs.",
    "Prefill per batch is p0 + p1·b and one decode step s0 + s1·(sequences still active), "
    "fitted by non-negative least squares on the per-point means of the server's batch metrics "
    "against the expected steps of the measured mean batch size; sampling options are those of "
    "the sweep's workload.",
    "Closed loop: users whose requests end early (shorter prompts) send again while their batch "
    "still runs and wait for it; the user of a batch's last request races the batch's release "
    "of its worker and joins the requests already waiting with the probability counted in the "
    "fitted points' client rows (Laplace's rule; even odds where it cannot be counted), else "
    "waits a whole batch. This is what desynchronises users: batches hold fewer requests than "
    "there are users, and fewer still when replicas split them.",
    "The batch workers of one replica run independently; their contention for the replica's "
    "threads is whatever it was in the fitted points.",
    "Replicas are independent and identical; requests are spread by the sweep's balancing rule. "
    "On a CPU host each busy batch worker needs the CPU measured per busy worker in the fitted "
    "points (process CPU seconds over batch busy seconds; its intra threads when the run did not "
    "record process CPU) and the load generator its measured CPU per request; where that demand "
    "exceeds the host's cores every step slows by demand / cores, averaged over the simulated "
    "time the workers are busy together. Slowdown below saturation (shared caches, memory "
    "bandwidth, SMT siblings) is not modelled; GPU replicas are assumed not to contend.",
    "Open-loop predictions use Poisson arrivals; closed-loop ones use zero think time. The client "
    "adds a constant overhead (median of client minus server TTFT). Errors and timeouts are not "
    "modelled: predicted error rate is 0.",
    "Predictions measure the way the harness does: requests sent after the warm-up and before "
    "the end of the window (at most max_requests) count, in-flight ones are drained, and "
    "throughput is their number over first send to last finish, averaged over several simulated "
    "windows. Closed-loop users start within Locust's 10 ms spawn interval or all at once, "
    "whichever reproduces the measured batch sizes.",
)

_SIM_TARGET_SAMPLES: Final = 600
"""Open loop: simulated windows are pooled until they hold about this many requests."""
_CLOSED_LOOP_REPLICATIONS: Final = 8
"""Closed loop: simulated windows pooled per prediction (each one realisation of the users)."""
_BISECT_STEPS: Final = 8
_CONTENTION_ITERATIONS: Final = 3
_CONTENTION_TOLERANCE: Final = 0.005

_Run = tuple[Sim, list[int], float]  # one simulated window: state, measured requests, span


@dataclass
class CapacityModel:
    """Fitted batch-service queues, one per base configuration, and their predictions.

    Attributes:
        services: Fitted service times per base configuration
            (:attr:`reports.load.Rpt.BASE_CONFIG_ID`).
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
        """Fitted base configurations, in label order."""
        return sorted(self.services, key=lambda b: (self.services[b].label, b))

    def label(self, base_config_id: str) -> str:
        """The display label of a base configuration, fitted or not (else the id itself)."""
        if base_config_id in self.services:
            return self.services[base_config_id].label
        pts = self.points
        if Rpt.BASE_CONFIG_ID in pts.columns:
            hit = pts[pts[Rpt.BASE_CONFIG_ID] == base_config_id]
            if len(hit):
                return str(hit[Rpt.BASE_CONFIG].iloc[0])
        return base_config_id

    @property
    def assumptions(self) -> tuple[str, ...]:
        """What the model takes for granted, in words (shown in the report)."""
        return ASSUMPTIONS

    def service(self, base_config_id: str) -> ServiceTimes:
        """The fitted service times of a base configuration.

        Raises:
            KeyError: The configuration was not fitted; the message says why.
        """
        if base_config_id in self.services:
            return self.services[base_config_id]
        reason = self.unfitted.get(base_config_id, "not in this run")
        raise KeyError(f"no capacity model for {base_config_id!r}: {reason}")

    @property
    def host(self) -> Host:
        """What the replicas share (device, cores, co-run probe)."""
        return Host(self.device, self.cpu_cores)

    def slowdown(self, base_config_id: str, replicas: int) -> float:
        """Contention factor of ``replicas`` replicas with every batch worker busy (the load
        generator not counted): what full batches back to back run at."""
        st = self.service(base_config_id)
        busy = float(replicas * st.batch_workers)
        return self.host.contention(st.cpu_per_worker, busy)

    def predict(
        self,
        base_config_id: str,
        replicas: int,
        rate: float | None = None,
        *,
        concurrency: int | None = None,
        arrival: str = "poisson",
    ) -> Prediction:
        """Predict throughput and latency of ``replicas`` replicas at one load.

        Args:
            base_config_id: Base configuration.
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
        st = self.service(base_config_id)
        arrival = "constant" if arrival == "constant" else "poisson"
        key = (base_config_id, replicas, rate, concurrency, arrival)
        if key not in self._cache:
            runs, slow = self._replay(st, replicas, rate, concurrency, arrival)
            self._cache[key] = _pooled(st, replicas, rate, concurrency, runs, slow)
        return self._cache[key]

    def _replications(self, rate: float | None, concurrency: int | None) -> int:
        reps = self.replications
        if rate is not None and rate > 0:
            # Enough simulated requests that the arrival process's own noise stays small.
            expected = rate * self.window.duration_s
            reps = min(max(reps, math.ceil(_SIM_TARGET_SAMPLES / max(expected, 1.0))), 8)
        elif concurrency is not None:
            # Closed loop: each window is one realisation of the users' batch dynamics.
            reps = max(reps, _CLOSED_LOOP_REPLICATIONS)
        return reps

    def _replay(
        self,
        st: ServiceTimes,
        replicas: int,
        rate: float | None,
        concurrency: int | None,
        arrival: str,
    ) -> tuple[list[_Run], float]:
        """Simulated windows, replayed until the CPU contention they run at is the one they
        produce; (the windows, that contention factor)."""
        reps = self._replications(rate, concurrency)
        host = self.host
        contended = host.device == "cpu" and bool(host.cores)
        slow = self.slowdown(st.base_config_id, replicas)  # start from every worker busy
        runs: list[_Run] = []
        for attempt in range(_CONTENTION_ITERATIONS if contended else 1):
            runs = [
                simulate(
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
                for rep in range(reps)
            ]
            if not contended:
                break
            # Contention follows the simulated overlap of busy workers and the load
            # generator's CPU at the simulated throughput; replay until they agree.
            done = sum(len(m) for _, m, _ in runs)
            loadgen = st.loadgen_cpu_s_per_request * done / sum(sp for _, _, sp in runs)
            lo, hi = self.window.warmup_s, self.window.warmup_s + self.window.duration_s
            new = busy_weighted(
                [sim for sim, _, _ in runs],
                lo,
                hi,
                functools.partial(host.contention, st.cpu_per_worker, loadgen_cores=loadgen),
            )
            if abs(new - slow) <= _CONTENTION_TOLERANCE * slow:
                break
            if attempt < _CONTENTION_ITERATIONS - 1:
                slow = new
        return runs, slow

    def max_throughput(self, base_config_id: str, replicas: int) -> float:
        """Requests/s of ``replicas`` replicas running full batches back to back (an upper bound).

        Args:
            base_config_id: Base configuration.
            replicas: Replica count.

        Returns:
            ``replicas x workers x max_batch_size / (batch time x contention)``.
        """
        st = self.service(base_config_id)
        b = st.max_batch_size
        per_batch = st.batch_time_s(b) * self.slowdown(base_config_id, replicas)
        return replicas * st.batch_workers * b / per_batch if per_batch > 0 else math.inf

    def slo_capacity(self, base_config_id: str, replicas: int, slo: SLOSpec) -> float:
        """Highest Poisson rate whose prediction meets the SLO (bisection on the simulation).

        Args:
            base_config_id: Base configuration.
            replicas: Replica count.
            slo: The objective.

        Returns:
            Requests/s; 0 when even a trickle misses it.
        """
        lo, hi = 0.0, self.max_throughput(base_config_id, replicas)
        if not math.isfinite(hi):
            return math.inf
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2
            if self.predict(base_config_id, replicas, _round_rate(mid)).meets(slo):
                lo = mid
            else:
                hi = mid
        return lo

    def min_replicas(
        self, base_config_id: str, target_rps: float, slo: SLOSpec, *, max_replicas: int = 64
    ) -> int | None:
        """Fewest replicas whose predicted p95s meet the SLO at ``target_rps``.

        Args:
            base_config_id: Base configuration.
            target_rps: Poisson load to carry.
            slo: The objective.
            max_replicas: Search limit.

        Returns:
            The replica count, or ``None`` when none up to the limit does.
        """
        rate = _round_rate(target_rps)
        for n in range(1, max_replicas + 1):
            if self.max_throughput(base_config_id, n) < target_rps:
                continue  # cannot carry the load even with full batches
            if self.predict(base_config_id, n, rate).meets(slo):
                return n
        return None

    def with_points(self, config_points: pd.DataFrame) -> CapacityModel:
        """A model refitted on other points of the same run (same window, host and seed)."""
        return fit_points(
            config_points,
            window=self.window,
            balance=self.balance,
            host=self.host,
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
            mine = pts[pts[Rpt.BASE_CONFIG_ID] == base]
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
        Rpt.BASE_CONFIG_ID: base,
        Rpt.BASE_CONFIG: model.label(base),
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


def _pooled(
    st: ServiceTimes,
    replicas: int,
    rate: float | None,
    concurrency: int | None,
    runs: list[_Run],
    slow: float,
) -> Prediction:
    """One prediction from several simulated windows: percentiles over their pooled measured
    requests, throughput averaged over the windows."""
    sends: list[float] = []
    firsts: list[float] = []
    finishes: list[float] = []
    toks: list[int] = []
    batch_sizes: list[int] = []
    thr, tps = [], []
    for sim, measured, span in runs:
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

    return Prediction(
        base_config_id=st.base_config_id,
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
        slowdown=slow,
    )


def fit_points(
    points: pd.DataFrame,
    *,
    window: Window,
    balance: str,
    host: Host,
    seed: int,
    replications: int,
    fit_replicas: tuple[int, ...] | None = None,
) -> CapacityModel:
    """Fit every base configuration of some points, each on its own points.

    Args:
        points: Valid points with their statistics and the
            :class:`reports.capacity.columns.FitCol` inputs.
        window: The measured window predictions replay.
        balance: The sweep's balancing rule.
        host: What the replicas shared.
        seed: Simulation seed.
        replications: Simulated windows pooled per prediction.
        fit_replicas: Replica counts the points were restricted to, if any.

    Returns:
        The model; configurations that cannot be fitted are in ``unfitted`` with the reason.
    """
    services: dict[str, ServiceTimes] = {}
    unfitted: dict[str, str] = {}
    for (label, base), group in points.groupby([Rpt.BASE_CONFIG, Rpt.BASE_CONFIG_ID], sort=True):
        tokens, prompts = tokens_from_points(group)
        result = fit_service(str(base), str(label), group, tokens, prompts, host)
        if isinstance(result, str):
            unfitted[str(base)] = result
        else:
            services[str(base)] = calibrate_start(result, group, window, balance, host, seed)
    return CapacityModel(
        services=services,
        unfitted=unfitted,
        window=window,
        balance=balance,
        device=host.device,
        cpu_cores=host.cores,
        points=points,
        fit_replicas=fit_replicas,
        seed=seed,
        replications=replications,
    )
