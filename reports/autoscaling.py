"""Autoscaling advice: capacity per replica plus measured cold start -> scaler targets and lead.

Two questions, answered per configuration whose SLO capacity is known:

* **What target of requests waiting per replica?** Little's law on the waiting queue: in a
  steady state the mean number waiting is arrival rate times mean wait, ``L_q = λ · W_q``.
  ``λ`` is the per-replica rate (SLO capacity / replicas) and ``W_q`` the server's mean queue
  wait measured at that rate (``server_queue_wait_mean_s``, interpolated between load levels).
  A scaler holding ``tokenbooth_requests_waiting`` at that ``L_q`` holds every replica at the
  SLO edge, with no room for the load to grow while new replicas start.
* **How far ahead to scale?** A new replica serves only after the lead time: the metric's lag,
  one scaler sync, the replica's cold start (``cold_start.csv``, process start to ready) and the
  probes that notice it. A ramp of ``s`` req/s per minute adds ``s · lead / 60`` req/s in that
  time, so scale-up must start when the fleet's load is that much below its capacity: at a
  fraction ``1 - s · lead / (60 · n · C)`` of it, and the target is ``L_q`` at that lower rate.
  Where that fraction is not positive the ramp outruns any reactive scaler: keep spare replicas.

:func:`scale_behaviour` turns a cold start into the HPA ``behavior`` block; the shipped HPA and
KEDA ScaledObject are that block for :data:`REFERENCE_COLD_START_S` (a test keeps them equal).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from loadgen.results import ColdStartStatus, Cs, Point, RunDir
from reports.analysis import Analysis
from reports.cells import num, pct
from reports.document import Section, Table
from reports.load import Rpt

__all__ = [
    "HPA_SYNC_PERIOD_S",
    "METRIC_LAG_S",
    "PROBE_PERIOD_S",
    "RAMP_MULTIPLES",
    "REFERENCE_COLD_START_S",
    "SCALE_DOWN_WINDOW_MIN_S",
    "ConfigAdvice",
    "RampAdvice",
    "ScaleBehaviour",
    "advise",
    "autoscaling_section",
    "lead_time_s",
    "scale_behaviour",
]

HPA_SYNC_PERIOD_S: Final = 15
"""How often the HPA controller acts (kube-controller-manager's default sync period)."""
PROBE_PERIOD_S: Final = 5
"""``periodSeconds`` of the startup and readiness probes (deploy/k8s/base/deployment.yaml): a
ready process is seen by the startup probe, then the readiness probe, at most one period each."""
METRIC_LAG_S: Final = 30
"""How old the scaler's view of the queue can be: the 15 s scrape interval (ServiceMonitor)
plus KEDA's 15 s pollingInterval (prometheus-adapter answers live, so an HPA lags less)."""
REFERENCE_COLD_START_S: Final = 4.0
"""Process start to ready of SmolLM2-135M INT8 on CPU, rounded up: 0.96-1.13 s measured with
the page cache warm (3 starts), about 4 s on the first start after the model was built (cold
cache). What the shipped HPA and ScaledObject are sized for; any value up to 5 s gives the same
45 s step. Measure it for your model and nodes with
``tokenbooth serve --model M & curl -s localhost:8000/metrics | grep startup_duration``
(phase ``total``), or read a sweep's ``cold_start.csv``; then apply :func:`scale_behaviour`."""
SCALE_DOWN_WINDOW_MIN_S: Final = 300
"""Kubernetes' default scale-down stabilisation: removing a replica later is cheap, re-adding
one costs a whole lead time."""
RAMP_MULTIPLES: Final[tuple[float, ...]] = (0.5, 1.0, 2.0)
"""Ramps advised for, in replicas' worth of capacity added per minute."""
_HEADLINE_RAMP: Final = 1.0


def lead_time_s(cold_start_s: float) -> float:
    """From the load crossing the target to a new replica serving, for one cold start.

    Metric lag + one HPA sync (the decision) + the cold start + both probes noticing it. Pod
    scheduling, image pull and filling a model volume come on top where they are not cached.
    """
    return METRIC_LAG_S + HPA_SYNC_PERIOD_S + cold_start_s + 2 * PROBE_PERIOD_S


@dataclass(frozen=True)
class ScaleBehaviour:
    """An HPA ``behavior`` sized from a cold start (also KEDA's horizontalPodAutoscalerConfig).

    Attributes:
        cold_start_s: The cold start it was sized for.
        step_period_s: A scale-up step's period: long enough for the pods one step added to be
            ready and counted in the metric before the next step, so a queue that the loading
            replicas will absorb does not trigger another step (rounded up to HPA syncs).
        scale_down_window_s: Scale-down stabilisation, at least five scale-up steps.
    """

    cold_start_s: float
    step_period_s: int
    scale_down_window_s: int

    def manifest(self) -> dict[str, Any]:
        """The ``behavior`` block, as the HPA and the ScaledObject spell it."""
        return {
            "scaleUp": {
                # 0: any delay here adds straight to the cold start a new replica already costs.
                "stabilizationWindowSeconds": 0,
                "selectPolicy": "Max",
                "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": self.step_period_s},
                    {"type": "Pods", "value": 2, "periodSeconds": self.step_period_s},
                ],
            },
            "scaleDown": {
                "stabilizationWindowSeconds": self.scale_down_window_s,
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
            },
        }


def scale_behaviour(cold_start_s: float) -> ScaleBehaviour:
    """The HPA behaviour for replicas whose process start to ready takes ``cold_start_s``."""
    visible = cold_start_s + 2 * PROBE_PERIOD_S + METRIC_LAG_S
    step = math.ceil(visible / HPA_SYNC_PERIOD_S) * HPA_SYNC_PERIOD_S
    down = max(SCALE_DOWN_WINDOW_MIN_S, 5 * step)
    return ScaleBehaviour(cold_start_s, step, down)


@dataclass(frozen=True)
class RampAdvice:
    """When to start scaling for one ramp slope.

    Attributes:
        ramp_rps_per_min: Load growth, requests/s per minute.
        added_rps: Load added during one lead time.
        start_fraction: Fleet load, as a fraction of fleet capacity, at which scale-up must
            start; not positive when the ramp outruns the lead time.
        start_rps_per_replica: The per-replica rate at that point.
        target_waiting: Requests waiting per replica there (Little's law), NaN when
            ``start_fraction`` is not positive.
        spare_replicas: Replicas' worth of capacity the ramp adds during one lead time: what a
            scaler must be ahead by (or what ``minReplicas`` must hold spare when it cannot).
    """

    ramp_rps_per_min: float
    added_rps: float
    start_fraction: float
    start_rps_per_replica: float
    target_waiting: float
    spare_replicas: int


@dataclass(frozen=True)
class ConfigAdvice:
    """Autoscaling advice for one configuration (see the module docstring for the method).

    Attributes:
        config_key: :attr:`Rpt.CONFIG_KEY`.
        label: Display label.
        replicas: Replicas the capacity was measured with.
        capacity_rps: Fleet SLO capacity, requests/s.
        per_replica_rps: ``capacity_rps / replicas``.
        queue_wait_s: Server mean queue wait at the capacity rate, NaN when not measured.
        waiting_at_capacity: ``per_replica_rps * queue_wait_s``: requests waiting per replica.
        cold_start_s: Slowest measured replica's process start to ready, NaN when none.
        cold_start_note: How the cold start was found (or why not).
        lead_s: :func:`lead_time_s` of the cold start, NaN without one.
        ramps: One entry per :data:`RAMP_MULTIPLES`, empty without a cold start.
        behaviour: The HPA behaviour for the cold start, ``None`` without one.
    """

    config_key: str
    label: str
    replicas: int
    capacity_rps: float
    per_replica_rps: float
    queue_wait_s: float
    waiting_at_capacity: float
    cold_start_s: float
    cold_start_note: str
    lead_s: float
    ramps: list[RampAdvice]
    behaviour: ScaleBehaviour | None

    @property
    def headline(self) -> RampAdvice | None:
        """The advice for a ramp of one replica's capacity per minute."""
        hit = [
            r
            for r in self.ramps
            if math.isclose(r.ramp_rps_per_min, _HEADLINE_RAMP * self.per_replica_rps)
        ]
        return hit[0] if hit else None


def _queue_wait_at(levels: pd.DataFrame, fleet_rps: float) -> float:
    """Server mean queue wait at ``fleet_rps``, linear between levels (clamped at the ends)."""
    if Point.SERVER_QUEUE_WAIT_MEAN_S not in levels:
        return math.nan
    d = levels[[Point.ACHIEVED_RPS, Point.SERVER_QUEUE_WAIT_MEAN_S]].apply(
        pd.to_numeric, errors="coerce"
    )
    d = d.dropna().sort_values(Point.ACHIEVED_RPS)
    if d.empty or not math.isfinite(fleet_rps):
        return math.nan
    x = d[Point.ACHIEVED_RPS].to_numpy(dtype=float)
    y = d[Point.SERVER_QUEUE_WAIT_MEAN_S].to_numpy(dtype=float)
    return float(np.interp(fleet_rps, x, y))


def _cold_start(frame: pd.DataFrame, config_id: str) -> tuple[float, str]:
    """Slowest measured ``total_s`` of a configuration's replicas, and how it was found."""
    rows = frame[frame[Cs.CONFIG_ID] == config_id]
    if rows.empty:
        return math.nan, "not recorded (the run predates cold_start.csv)"
    measured = rows[rows[Cs.STATUS] == ColdStartStatus.MEASURED]
    if measured.empty:
        details = sorted({f"{r[Cs.STATUS]}: {r[Cs.DETAIL]}" for _, r in rows.iterrows()})
        return math.nan, "; ".join(details)
    total = pd.to_numeric(measured[Cs.TOTAL_S], errors="coerce")
    slowest = float(total.max())
    return slowest, (
        f"slowest of {len(measured)} replica(s), {num(total.min())}–{num(slowest)} s "
        "(local process start to ready: no scheduling, image pull or volume fill)"
    )


def _ramp(
    ramp: float, lead_s: float, replicas: int, per_replica: float, levels: pd.DataFrame
) -> RampAdvice:
    added = ramp * lead_s / 60.0
    fraction = 1.0 - added / (replicas * per_replica)
    start = fraction * per_replica
    target = math.nan
    if fraction > 0:
        target = start * _queue_wait_at(levels, start * replicas)
    return RampAdvice(ramp, added, fraction, start, target, math.ceil(added / per_replica))


def advise(analysis: Analysis) -> list[ConfigAdvice]:
    """Advice for every configuration with a usable SLO capacity, in label order."""
    cold = RunDir(analysis.run.path).cold_start()
    out = []
    for key, cap in analysis.capacity.items():
        if not cap.usable:
            continue
        pts = analysis.points[analysis.points[Rpt.CONFIG_KEY] == key]
        if pts.empty:
            continue
        replicas = max(1, int(pts[Point.REPLICAS].iloc[0]))
        levels = analysis.levels[analysis.levels[Rpt.CONFIG_KEY] == key]
        per_replica = cap.rate_rps / replicas
        wait = _queue_wait_at(levels, cap.rate_rps)
        cold_s, note = _cold_start(cold, str(pts[Point.CONFIG_ID].iloc[0]))
        lead = lead_time_s(cold_s) if math.isfinite(cold_s) else math.nan
        ramps = []
        if math.isfinite(lead) and per_replica > 0:
            ramps = [
                _ramp(m * per_replica, lead, replicas, per_replica, levels) for m in RAMP_MULTIPLES
            ]
        out.append(
            ConfigAdvice(
                config_key=str(key),
                label=analysis.label(str(key)),
                replicas=replicas,
                capacity_rps=cap.rate_rps,
                per_replica_rps=per_replica,
                queue_wait_s=wait,
                waiting_at_capacity=per_replica * wait,
                cold_start_s=cold_s,
                cold_start_note=note,
                lead_s=lead,
                ramps=ramps,
                behaviour=scale_behaviour(cold_s) if math.isfinite(cold_s) else None,
            )
        )
    return out


def _ramp_row(a: ConfigAdvice, r: RampAdvice) -> list[str]:
    start = (
        f"{pct(r.start_fraction)} of capacity ({num(r.start_rps_per_replica)} req/s per replica)"
        if r.start_fraction > 0
        else "never in time: keep the spare replicas warm"
    )
    return [
        a.label,
        f"{num(r.ramp_rps_per_min)} req/s per min",
        f"{num(r.added_rps)} req/s",
        start,
        num(r.target_waiting),
        str(r.spare_replicas),
    ]


def autoscaling_section(analysis: Analysis) -> Section | None:
    """The report's autoscaling advice, or ``None`` when no configuration has a capacity."""
    advice = advise(analysis)
    if not advice:
        return None
    rows = [
        [
            a.label,
            f"{num(a.capacity_rps)} req/s over {a.replicas}: {num(a.per_replica_rps)} per replica",
            num(a.queue_wait_s, unit=" s"),
            num(a.waiting_at_capacity),
            f"{num(a.cold_start_s, unit=' s')} ({a.cold_start_note})",
            num(a.lead_s, unit=" s"),
            num(a.headline.target_waiting) if a.headline else "–",
        ]
        for a in advice
    ]
    summary = Table(
        "Scaler target per configuration",
        [
            "configuration",
            "SLO capacity",
            "queue wait at capacity",
            "waiting per replica at capacity (Little)",
            "cold start",
            "lead time",
            "target waiting per replica (ramp: 1 replica/min)",
        ],
        rows,
        note=(
            "Waiting at capacity = per-replica rate × the server's mean queue wait there: a "
            "scaler held at it keeps each replica at the SLO edge. Lead time = metric lag "
            f"{METRIC_LAG_S} s + HPA sync {HPA_SYNC_PERIOD_S} s + cold start + "
            f"2 × {PROBE_PERIOD_S} s probe periods. Set the HPA's averageValue or the "
            "ScaledObject's threshold to the target; fractions are fine (e.g. 600m)."
        ),
        key="autoscaling-table",
    )
    ramp_rows = [_ramp_row(a, r) for a in advice for r in a.ramps]
    tables = [summary]
    if ramp_rows:
        tables.append(
            Table(
                "How far ahead to scale, per ramp",
                [
                    "configuration",
                    "ramp",
                    "load added during the lead time",
                    "start scaling up at",
                    "target waiting per replica",
                    "spare replicas needed",
                ],
                ramp_rows,
                note=(
                    "Scale-up must start when fleet load = capacity − ramp × lead time; the "
                    "target is Little's law at that rate. Spare replicas: capacity the ramp adds "
                    "during one lead time, in replicas."
                ),
                key="autoscaling-ramps",
            )
        )
    code = [
        (
            f"HPA behavior for {a.label} (cold start {num(a.cold_start_s)} s; "
            "deploy/k8s/base/hpa.yaml, or the ScaledObject's horizontalPodAutoscalerConfig)",
            json.dumps({"behavior": a.behaviour.manifest()}, indent=2),
        )
        for a in advice
        if a.behaviour is not None
    ]
    paragraphs = [
        "From the capacity under the SLO and each replica's measured cold start: the queue "
        "target for tokenbooth_requests_waiting per replica (HPA Pods metric or KEDA "
        "Prometheus trigger) and how early scale-up must start for a given ramp."
    ]
    missing = [a.label for a in advice if not a.ramps]
    if missing:
        paragraphs.append(
            f"No ramp advice for {', '.join(missing)}: no replica cold start was measured "
            "(see the cold start column)."
        )
    return Section("autoscaling", "Autoscaling", paragraphs=paragraphs, tables=tables, code=code)
