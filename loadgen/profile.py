"""Runs a ``[load] stages`` profile: one continuous Locust run, one result point per stage.

The stages run back to back against the same replicas (a spike meets the queue the steady stage
left), so they are not separate sweep points with their own warm-up: the profile warms up once,
then each stage's requests (by send time, or scheduled time in open loop) and the server's
``/metrics`` deltas between the stage's boundaries become that stage's point, written like any
other (``points.csv`` with :attr:`~loadgen.results.Point.STAGE` and the stage's start and end
levels). Closed-loop stages change the user count through Locust's ``LoadTestShape``
(:class:`StageShape`); open-loop stages follow one schedule built from the cumulative rate
(:meth:`loadgen.stages.StageProfile.schedule`).

Importing this module imports Locust: only the sweep runner imports it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
import locust
import numpy as np
import psutil
from locust import LoadTestShape
from locust.env import Environment

from loadgen import scrape
from loadgen.results import Col, Point, PointStatus
from loadgen.spec import LoadLevel, ServerConfig
from loadgen.stages import StageProfile
from loadgen.summary import server_summary, summarize_point, synchronised
from loadgen.users import Balancer, ClosedLoopUser, PointContext
from loadgen.workload import PromptItem
from service.errors import TokenboothError

if TYPE_CHECKING:
    from loadgen.runner import SweepRunner, _Target

__all__ = ["StageShape", "run_profile"]

logger = logging.getLogger("tokenbooth.loadgen")

# Locust's shape worker ticks once a second; asking a little ahead means a tick that lands a
# few milliseconds before a stage boundary already returns the next stage's users.
_TICK_LOOKAHEAD_S = 0.05


class StageShape(LoadTestShape):
    """Locust's load shape for closed-loop stages: users at each tick from the profile.

    Run time counts from ``origin`` (wall clock), the profile's start, not from when Locust
    started the shape, so user changes and the runner's stage windows share one clock.
    """

    def __init__(
        self, profile: StageProfile, origin: float, *, spawn_rate: float, hold_s: float
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.profile = profile
        self.origin = origin
        self.spawn_rate = spawn_rate
        self.hold_s = hold_s

    def get_run_time(self) -> float:
        """Seconds since the profile's origin."""
        return time.time() - self.origin

    def tick(self) -> tuple[int, float] | None:
        """(users, spawn rate) now, or None once the profile and its hold are over."""
        t = self.get_run_time() + _TICK_LOOKAHEAD_S
        return self.profile.tick(t, spawn_rate=self.spawn_rate, hold_s=self.hold_s)


def run_profile(
    sr: SweepRunner, config: ServerConfig, rep: int, target: _Target, items: list[PromptItem]
) -> str | None:
    """Run the spec's stage profile once (repeat ``rep``); return why a replica died, or None."""
    spec, run = sr.spec, sr.spec.run
    stages = spec.load.stages
    levels = spec.levels()
    keys = [f"{config.config_id}|{lv.key}|{rep}" for lv in levels]
    if all(sr._is_done(k) for k in keys):
        return None
    pids = [sr._point_id(k) for k in keys]
    closed = stages[0].mode == "concurrency"
    if closed and sr._master is not None:
        raise TokenboothError(
            "closed-loop stages run in one process (Locust's shape changes its users); "
            "run them without [load] workers / --workers, or use rate stages"
        )
    ctx = PointContext(
        api=spec.workload.api,
        model=target.model,
        items=items,
        balancer=Balancer(target.urls, spec.target.balance),
        ignore_eos=spec.workload.ignore_eos,
        temperature=spec.workload.temperature,
        timeout_s=run.request_timeout_s,
        measure_from=math.inf,
        stop_at=math.inf,
        max_requests=run.max_requests,
        headers=target.headers,
        next_index=sr._prompt_cursor,
        think_time=spec.load.think_time_s if closed else None,
        seed=run.seed + pids[0],
        sessions=sr._sessions,
        turn_think_time=spec.workload.turn_think_time_s,
    )
    first_users = round(stages[0].start)
    ramp = sr._ramp_s(ctx, first_users, keys[0]) if closed else math.nan
    # A whole-second lead puts stage boundaries (whole seconds apart when durations are) on
    # Locust's once-a-second shape ticks.
    lead = float(math.ceil(max(run.warmup_s, ramp if closed else 0.0)))
    profile = StageProfile(stages, lead_s=lead)
    logger.info("stage profile: %s", profile.describe())
    t0 = time.time() + 0.2
    ctx.measure_from = t0 + lead
    ctx.stop_at = t0 + profile.total_s
    if not closed:
        offsets = profile.schedule(
            spec.load.arrival, burstiness=spec.load.burstiness, seed=run.seed + pids[0]
        )
        ctx.schedule = [t0 + float(o) for o in offsets]
    windows = [(t0 + a, t0 + b) for a, b in profile.windows()]
    # The server's view of each stage: snapshots at every boundary (stage k: k to k + 1).
    snaps: list[dict[str, scrape.Snapshot]] = [{} for _ in windows]

    def snapshot(k: int) -> None:
        snaps[k].update(
            {
                u: scrape.snapshot(u, adapter=sr._adapter, headers=target.headers)
                for u in target.urls
            }
        )

    gevent.get_hub().loop.update_now()
    snappers = [
        gevent.spawn_later(max(0.0, start - time.time()), snapshot, k)
        for k, (start, _) in enumerate(windows)
    ]
    for k, lv in enumerate(levels):
        sr.progress(
            {"event": "point_start", "key": keys[k], "point_id": pids[k], "level": lv.key}
            | {"config": config.config_id}
        )
    proc = psutil.Process()
    cpu0, wall0 = proc.cpu_times(), time.monotonic()
    worker_cpu: float | None = None
    if closed:
        users0 = max(first_users, 1)
        spawn_rate = users0 / ramp if ramp > 0 else users0 * 100.0
        _drive_shape(
            ctx, StageShape(profile, t0, spawn_rate=spawn_rate, hold_s=ctx.timeout_s), target.alive
        )
        sr._prompt_cursor = ctx.next_index
    elif sr._master is not None:
        worker_cpu = sr._drive_distributed(ctx, LoadLevel("rate", 1.0, spec.load.arrival), target)
        n = max(len(sr._master.clients), 1)
        sr._prompt_cursor += 2 * (len(ctx.rows) // n + 1) + 64
    else:
        sr._drive(ctx, LoadLevel("rate", 1.0, spec.load.arrival), target)
        sr._prompt_cursor = ctx.next_index
    cpu1 = proc.cpu_times()
    wall = max(time.monotonic() - wall0, 1e-9)
    cpu_pct = 100.0 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall
    if worker_cpu is not None:
        cpu_pct = max(cpu_pct, worker_cpu)
    gevent.joinall(snappers, timeout=30)
    for k, taken in enumerate(snaps):
        if not taken:
            snapshot(k)  # the profile ended before this stage began (e.g. the target died)
    final = {
        u: scrape.snapshot(u, adapter=sr._adapter, headers=target.headers) for u in target.urls
    }
    sends = np.asarray(
        [
            r[Col.SCHEDULED_AT] if math.isfinite(r[Col.SCHEDULED_AT]) else r[Col.SENT_AT]
            for r in ctx.rows
        ],
        dtype=np.float64,
    )
    stage_of = profile.stage_of(sends - t0) if sends.size else np.zeros(0, dtype=np.int64)
    dead = target.alive()
    for k, (lv, pid, key) in enumerate(zip(levels, pids, keys, strict=True)):
        rows = [r for r, s in zip(ctx.rows, stage_of, strict=True) if s == k]
        for r in rows:
            r[Col.POINT_ID] = pid
        after = snaps[k + 1] if k + 1 < len(snaps) else final
        server_rows = [
            row for u in target.urls for row in scrape.deltas(pid, u, snaps[k][u], after[u])
        ]
        sr.run.write_requests(pid, rows)
        sr.run.write_server(pid, server_rows)
        summary = sr._base_row(pid, config, lv, rep) | {Point.STARTED_AT: windows[k][0]}
        summary |= summarize_point(
            rows, level=lv, lag_threshold_s=run.lag_threshold_s, min_samples=run.min_samples
        )
        summary |= server_summary(server_rows)
        summary[Point.RAMP_S] = ramp
        summary[Point.STAGE] = k
        summary[Point.STAGE_LEVEL_FROM] = stages[k].start
        summary[Point.STAGE_LEVEL_TO] = stages[k].end
        if closed and synchronised(summary[Point.SYNC_SHARE], summary[Point.SYNC_SHARE_POISSON]):
            logger.warning(
                "stage %s: closed-loop users stayed synchronised (sync share %.0f%%, Poisson "
                "%.1f%%); try [load] think_time_s, or rate stages",
                key,
                100 * summary[Point.SYNC_SHARE],
                100 * summary[Point.SYNC_SHARE_POISSON],
            )
        summary[Point.LOADGEN_CPU_PERCENT] = cpu_pct
        summary[Point.LOADGEN_BOTTLENECK] = cpu_pct >= 90.0
        summary[Point.STATUS] = PointStatus.REPLICA_DIED if dead else PointStatus.OK
        summary[Point.STATUS_DETAIL] = dead or ""
        if dead:
            summary[Point.VALID] = False
            summary[Point.INVALID_REASON] = "; ".join(
                x for x in (summary.get(Point.INVALID_REASON, ""), f"replica died: {dead}") if x
            )
        sr.run.append_point(summary)
        sr._state.setdefault("summaries", {})[key] = {
            Point.ACHIEVED_RPS: summary.get(Point.ACHIEVED_RPS, math.nan),
            Point.VALID: bool(summary.get(Point.VALID, False)),
        }
        sr._mark_done(key)
        sr.progress({"event": "point_done", "key": key, "summary": summary})
    return dead


def _drive_shape(ctx: PointContext, shape: StageShape, alive: Callable[[], str | None]) -> None:
    """Closed-loop stages in this process: Locust's shape worker sets the users each second."""
    env = Environment(user_classes=[ClosedLoopUser], events=locust.events, shape_class=shape)
    env.tokenbooth = ctx  # type: ignore[attr-defined]
    # Users the shape removes finish the request they are in (Locust waits up to this long).
    env.stop_timeout = ctx.timeout_s
    runner = env.create_local_runner()
    gevent.sleep(max(0.0, shape.origin - time.time()))
    runner.start_shape()
    hard_stop = ctx.stop_at + ctx.timeout_s + 5.0
    while time.time() < hard_stop:
        gevent.sleep(0.05)
        if alive() is not None:
            ctx.stopped = True
            break
        if ctx.stopped or time.time() >= ctx.stop_at:
            ctx.stopped = True
            if ctx.in_flight == 0:
                break
    runner.quit()
    runner.greenlet.join(timeout=10)
