"""Runs a ``[load] stages`` profile: one continuous Locust run, one result point per stage.

The stages run back to back against the same replicas (a spike meets the queue the steady stage
left), so they are not separate sweep points with their own warm-up: the profile warms up once,
then each stage's requests (by send time, or scheduled time in open loop) and the server's
``/metrics`` deltas between the stage's boundaries become that stage's point, written like any
other (``points.csv`` with :attr:`~loadgen.results.Point.STAGE` and the stage's start and end
levels). Closed-loop stages change the user count through Locust's ``LoadTestShape``
(:class:`StageShape`); open-loop stages follow one schedule built from the cumulative rate
(:meth:`loadgen.stages.StageProfile.schedule`). Each stage point is finished by the runner's
own :meth:`~loadgen.runner.SweepRunner._finish_point` (goodput, timeslices, validity, status),
over the stage's own window. The first users start over the closed-loop ramp; later changes
are steps (:func:`loadgen.stages.spawn_rates`), and each stage records the users it reached.
Profiles are not watched for saturation (``[run] saturation_s``): a spike is meant to overload
the target, and the stages after it, its recovery, are why a profile is run at all.

Importing this module imports Locust: only the sweep runner imports it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import locust
import numpy as np
import psutil
from locust import LoadTestShape
from locust.env import Environment

from loadgen import scrape
from loadgen.arrivals import warmup_start
from loadgen.results import Col, Point, PointStatus
from loadgen.spec import LoadLevel, ServerConfig
from loadgen.stages import StageProfile, spawn_rates, users_reached
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
        self,
        profile: StageProfile,
        origin: float,
        *,
        ramp_rate: float,
        step_rate: float,
        hold_s: float,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.profile = profile
        self.origin = origin
        self.ramp_rate = ramp_rate
        self.step_rate = step_rate
        self.hold_s = hold_s

    def get_run_time(self) -> float:
        """Seconds since the profile's origin."""
        return time.time() - self.origin

    def tick(self) -> tuple[int, float] | None:
        """(users, spawn rate) now, or None once the profile and its hold are over."""
        t = self.get_run_time() + _TICK_LOOKAHEAD_S
        return self.profile.tick(
            t, ramp_rate=self.ramp_rate, step_rate=self.step_rate, hold_s=self.hold_s
        )


def run_profile(
    sr: SweepRunner, config: ServerConfig, rep: int, target: _Target, items: list[PromptItem]
) -> str | None:
    """Run the spec's stage profile once (repeat ``rep``); return why a replica died, or None."""
    from loadgen.runner import (  # the runner imports this module: import at call time
        _Finish,
        loadgen_cpu_percent,
    )

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
        # The lead is the warm-up: at most max_requests of it, as for any open-loop point.
        offsets = offsets[warmup_start(offsets, lead, run.max_requests) :]
        ctx.schedule = [t0 + float(o) for o in offsets]
    windows = [(t0 + a, t0 + b) for a, b in profile.windows()]
    # The server's view of each stage: snapshots at every boundary (stage k: k to k + 1).
    snaps: list[dict[str, scrape.Snapshot]] = [{} for _ in windows]

    def stage_opens(k: int) -> None:
        snaps[k].update(
            {
                u: scrape.snapshot(u, adapter=sr._adapter, headers=target.headers)
                for u in target.urls
            }
        )
        sr.progress(
            {"event": "point_start", "key": keys[k], "point_id": pids[k], "level": levels[k].key}
            | {"config": config.config_id}
        )

    gevent.get_hub().loop.update_now()
    openers = [
        gevent.spawn_later(max(0.0, start - time.time()), stage_opens, k)
        for k, (start, _) in enumerate(windows)
    ]
    slices = sr._scrape_slices(target, ctx.measure_from)
    proc = psutil.Process()
    cpu0, wall0 = proc.cpu_times(), time.monotonic()
    worker_cpu: float | None = None
    users_seen: list[tuple[float, int]] = []
    if closed:
        ramp_rate, step_rate = spawn_rates(first_users, ramp, profile.peak())
        shape = StageShape(
            profile, t0, ramp_rate=ramp_rate, step_rate=step_rate, hold_s=ctx.timeout_s
        )
        users_seen = _drive_shape(ctx, shape, target.alive)
        sr._prompt_cursor = ctx.next_index
    elif sr._master is not None:
        worker_cpu = sr._drive_distributed(ctx, LoadLevel("rate", 1.0, spec.load.arrival), target)
        n = max(len(sr._master.clients), 1)
        sr._prompt_cursor += 2 * (len(ctx.rows) // n + 1) + 64
    else:
        # Not watched for saturation: a profile's spike is meant to overload the target, and
        # the stages after it (recovery) are the point of running one.
        sr._drive(ctx, LoadLevel("rate", 1.0, spec.load.arrival), target)
        sr._prompt_cursor = ctx.next_index
    cpu_pct = loadgen_cpu_percent(proc, cpu0, wall0, worker_cpu)
    gevent.joinall(openers, timeout=30)
    if slices is not None:
        slices[1].kill()
    for k, taken in enumerate(snaps):
        if not taken:
            stage_opens(k)  # the profile ended before this stage began (e.g. the target died)
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
    dead: str | None = None
    for k, (lv, pid, key) in enumerate(zip(levels, pids, keys, strict=True)):
        rows = [r for r, s in zip(ctx.rows, stage_of, strict=True) if s == k]
        after = snaps[k + 1] if k + 1 < len(snaps) else final
        server_rows = [
            row for u in target.urls for row in scrape.deltas(pid, u, snaps[k][u], after[u])
        ]
        extra: dict[str, Any] = {
            Point.STAGE: k,
            Point.STAGE_LEVEL_FROM: stages[k].start,
            Point.STAGE_LEVEL_TO: stages[k].end,
        }
        if closed:
            extra[Point.STAGE_USERS_MAX] = users_reached(users_seen, windows[k])
            wanted = round(max(stages[k].start, stages[k].end))
            if extra[Point.STAGE_USERS_MAX] < wanted:
                logger.warning(
                    "stage %s: Locust reached %d of its %d users",
                    key,
                    extra[Point.STAGE_USERS_MAX],
                    wanted,
                )
        summary = sr._finish_point(
            _Finish(key, pid, config, lv, rep, target),
            rows,
            server_rows,
            window=windows[k],
            cpu_pct=cpu_pct,
            ramp=ramp,
            slices=slices[0] if slices is not None else None,
            extra=extra,
        )
        if summary[Point.STATUS] == PointStatus.REPLICA_DIED:
            dead = str(summary[Point.STATUS_DETAIL])
    return dead


def _drive_shape(
    ctx: PointContext, shape: StageShape, alive: Callable[[], str | None]
) -> list[tuple[float, int]]:
    """Closed-loop stages in this process: Locust's shape worker sets the users each second.

    Returns:
        (wall time, users running) samples every 50 ms, for each stage's users reached.
    """
    env = Environment(user_classes=[ClosedLoopUser], events=locust.events, shape_class=shape)
    env.tokenbooth = ctx  # type: ignore[attr-defined]
    # Users the shape removes finish the request they are in (Locust waits up to this long).
    env.stop_timeout = ctx.timeout_s
    runner = env.create_local_runner()
    gevent.sleep(max(0.0, shape.origin - time.time()))
    runner.start_shape()
    hard_stop = ctx.stop_at + ctx.timeout_s + 5.0
    seen: list[tuple[float, int]] = []
    while time.time() < hard_stop:
        gevent.sleep(0.05)
        seen.append((time.time(), int(runner.user_count)))
        if alive() is not None:
            ctx.stopped = True
            break
        if ctx.stopped or time.time() >= ctx.stop_at:
            ctx.stopped = True
            if ctx.in_flight == 0:
                break
    runner.quit()
    runner.greenlet.join(timeout=10)
    return seen
