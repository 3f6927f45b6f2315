"""Host CPU contention: what replicas sharing a CPU host cost each other.

Each busy batch worker needs the CPU measured per busy worker in the fitted points (process CPU
seconds over batch busy seconds), the load generator its measured CPU per request; beyond the
host's cores every step slows in proportion (processor sharing). GPU hosts do not contend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from loadgen.results import Point
from reports.capacity.columns import FitCol, cell
from reports.capacity.simulate import Sim

__all__ = ["Host", "busy_weighted", "busy_workers", "cpu_demand", "loadgen_cores"]


@dataclass(frozen=True)
class Host:
    """What the replicas share: the device and its CPU cores.

    Attributes:
        device: ``cpu`` or ``cuda``.
        cores: CPU cores (``None``: unknown, no contention modelled).
    """

    device: str = "cpu"
    cores: int | None = None

    def contention(
        self, cpu_per_worker: float, busy_workers: float, loadgen_cores: float = 0.0
    ) -> float:
        """Slowdown of every batch while ``busy_workers`` batch workers compute on the host.

        CPU hosts only: the busy workers' measured CPU demand plus the load generator's,
        beyond the host's cores, shares the cores (processor sharing: every runnable thread
        gets ``cores / demand`` of one). Interference below that (shared caches, memory
        bandwidth, SMT siblings) is not modelled.

        Args:
            cpu_per_worker: Cores one busy batch worker keeps busy
                (:attr:`ServiceTimes.cpu_per_worker`).
            busy_workers: Workers computing at once, over all replicas.
            loadgen_cores: The load generator's CPU, in cores.

        Returns:
            The factor (1: no contention).
        """
        if self.device != "cpu" or not self.cores:
            return 1.0
        demand = busy_workers * cpu_per_worker + max(loadgen_cores, 0.0)
        return max(1.0, demand / self.cores)


def busy_weighted(
    sims: Sequence[Sim], lo: float, hi: float, factor: Callable[[int], float]
) -> float:
    """Mean of ``factor(k)`` over the busy worker-time of the window ``[lo, hi)``, ``k`` being
    the workers busy at once (every busy worker is slowed by the factor of that moment)."""
    num = den = 0.0
    for sim in sims:
        edges: list[tuple[float, int]] = []
        for a, b in sim.busy:
            a, b = max(a, lo), min(b, hi)
            if b > a:
                edges += [(a, 1), (b, -1)]
        edges.sort()
        k, prev = 0, lo
        for t, d in edges:
            if k > 0 and t > prev:
                num += (t - prev) * k * factor(k)
                den += (t - prev) * k
            k += d
            prev = t
    return num / den if den > 0 else factor(1)


def busy_workers(row: pd.Series, workers: int) -> float:
    """Workers busy at once, as a busy worker of this point saw it on average.

    Each of the point's ``replicas x workers`` workers was busy a measured fraction ``u`` of
    the window (batch prefill + decode seconds over the window); one busy worker sees itself
    plus, on average, ``u`` of every other one.
    """
    total = max(1, int(cell(row, Point.REPLICAS, 1)) * workers)
    busy = cell(row, FitCol.BATCH_BUSY_S)
    window = cell(row, Point.DURATION_S)
    if total == 1:
        return 1.0
    if not (busy > 0 and window > 0):
        return float(total)  # busy time not recorded: every worker taken as busy
    u = min(1.0, busy / (window * total))
    return 1.0 + (total - 1) * u


def loadgen_cores(row: pd.Series) -> float:
    """The load generator's CPU during a point, in cores (0 when not recorded)."""
    pct = cell(row, Point.LOADGEN_CPU_PERCENT)
    return pct / 100.0 if pct > 0 else 0.0


def cpu_demand(pts: pd.DataFrame, workers: int) -> tuple[float, float]:
    """(CPU cores per busy batch worker, load-generator CPU seconds per request) from the
    points' ``process_cpu_seconds_total`` deltas, batch busy time and load-generator CPU;
    NaN / 0 where the run did not record them."""
    cpu = busy = 0.0
    lg_cpu = lg_requests = 0.0
    for _, row in pts.iterrows():
        window = cell(row, Point.DURATION_S)
        c, b = cell(row, FitCol.PROCESS_CPU_S), cell(row, FitCol.BATCH_BUSY_S)
        capacity = window * max(1, int(cell(row, Point.REPLICAS, 1))) * workers
        if c > 0 and b > 0 and window > 0:
            cpu += c
            busy += min(b, capacity)  # batches straddling the window edge count once
        pct, n = cell(row, Point.LOADGEN_CPU_PERCENT), cell(row, Point.N_OK)
        if pct >= 0 and n > 0 and window > 0:
            lg_cpu += pct / 100.0 * window
            lg_requests += n
    per_worker = cpu / busy if busy > 0 else math.nan
    return per_worker, (lg_cpu / lg_requests if lg_requests > 0 else 0.0)
