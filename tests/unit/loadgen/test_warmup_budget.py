"""``[run] max_requests`` bounds a point's warm-up sends, not only its measured ones.

The open-loop schedules are capped where they are built (``test_arrivals``, ``test_traces``);
here the real users run against a scripted loopback server: closed-loop users, which send as
fast as the server answers, and open-loop sessions, whose later turns are not on the schedule.
The users run in a child process: importing :mod:`loadgen.users` imports Locust, whose gevent
monkey-patching must never reach the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support.sse_server import SSEServer

ROOT = Path(__file__).resolve().parents[3]
WARMUP_S = 1.0  # long enough for hundreds of unbounded warm-up sends to the quick script
WINDOW_S = 0.6
MAX_REQUESTS = 5

CHILD = textwrap.dedent(
    """
    import json, math, sys, time

    import gevent
    import locust
    from locust.env import Environment

    from loadgen.results import Col
    from loadgen.runner import _share
    from loadgen.sessions import SessionPlan, TurnPlan
    from loadgen.users import Balancer, ClosedLoopUser, OpenLoopUser, PointContext, new_session
    from loadgen.worker import _context, point_message
    from loadgen.workload import PromptItem

    urls, warmup_s, window_s, cap = json.loads(sys.argv[1])
    out = {}

    def context(url, **kw):
        return PointContext(
            api="chat", model="m", items=[PromptItem(max_tokens=3, prompt="hi", input_tokens=1)],
            balancer=Balancer([url]), ignore_eos=False, temperature=0.0, timeout_s=10.0,
            measure_from=math.inf, stop_at=math.inf, max_requests=cap, **kw,
        )

    def drive(ctx, user_class, users):
        env = Environment(user_classes=[user_class], events=locust.events)
        env.tokenbooth = ctx
        runner = env.create_local_runner()
        runner.start(users, spawn_rate=users * 100.0, wait=False)
        while time.time() < ctx.stop_at + 10.0:
            gevent.sleep(0.05)
            if (ctx.stopped or time.time() >= ctx.stop_at) and ctx.in_flight == 0:
                break
        runner.quit()
        return {
            "sent_warmup": ctx.sent_warmup,
            "sent_measured": ctx.sent_measured,
            "rows": len(ctx.rows),
            "early_rows": sum(r[Col.SENT_AT] < ctx.measure_from for r in ctx.rows),
        }

    # Closed loop, as the runner drives it: the ramp probe first (warm-up), then the users.
    ctx = context(urls["closed"])
    ctx.send(new_session(Environment(events=locust.events), pool_size=4), -1, None)
    t0 = time.time() + 0.2
    ctx.measure_from, ctx.stop_at = t0 + warmup_s, t0 + warmup_s + window_s
    ctx.user_starts = [t0, t0 + 0.05, t0 + 0.1]
    out["closed"] = drive(ctx, ClosedLoopUser, 3)

    # Open-loop sessions of three turns: four warm-up arrivals (12 turns), two measured (6).
    turns = tuple(TurnPlan(f"turn {k}", 1, 3) for k in range(3))
    ctx = context(urls["sessions"], sessions=[SessionPlan(turns=turns)])
    t0 = time.time() + 0.2
    ctx.measure_from, ctx.stop_at = t0 + warmup_s, t0 + warmup_s + window_s
    ctx.schedule = [t0 + 0.1 * k for k in range(4)] + [t0 + warmup_s, t0 + warmup_s + 0.1]
    out["sessions"] = drive(ctx, OpenLoopUser, 1)

    # Distributed: the warm-up already sent travels to the workers, split like max_requests.
    ctx = context(urls["closed"])
    ctx.sent_warmup = 3
    message = point_message(ctx, [urls["closed"]], "round_robin")
    out["worker_sent_warmup"] = _context(message).sent_warmup
    del message["sent_warmup"]  # a master from before the field
    out["old_master_sent_warmup"] = _context(message).sent_warmup
    out["shares"] = [[_share(total, k, n) for k in range(n)] for total, n in ((1, 2), (7, 3))]
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def sent() -> Any:
    """What the users sent and what the server answered, per scenario."""
    with SSEServer() as server:
        urls = {case: server.url(case, "quick") for case in ("closed", "sessions")}
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                json.dumps([urls, WARMUP_S, WINDOW_S, MAX_REQUESTS]),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert child.returncode == 0, child.stderr[-4000:]
        out = json.loads(child.stdout.strip().splitlines()[-1])
        out["answered"] = {case: len(server.log(case)) for case in urls}
        yield out


def test_closed_loop_users_stop_warming_up_at_max_requests_and_wait_for_the_window(
    sent: Any,
) -> None:
    closed = sent["closed"]
    assert closed["sent_warmup"] == MAX_REQUESTS  # the ramp probe is one of them
    assert closed["sent_measured"] == closed["rows"] == MAX_REQUESTS
    assert closed["early_rows"] == 0
    assert sent["answered"]["closed"] == 2 * MAX_REQUESTS


def test_open_loop_warm_up_sessions_stop_at_max_requests_sends(sent: Any) -> None:
    sessions = sent["sessions"]
    assert sessions["sent_warmup"] == MAX_REQUESTS  # of 12 warm-up turns scheduled
    assert sessions["sent_measured"] == sessions["rows"] == MAX_REQUESTS  # of 6
    assert sessions["early_rows"] == 0
    assert sent["answered"]["sessions"] == 2 * MAX_REQUESTS


def test_workers_carry_the_warm_up_already_sent_split_like_max_requests(sent: Any) -> None:
    assert sent["worker_sent_warmup"] == 3
    assert sent["old_master_sent_warmup"] == 0
    assert sent["shares"] == [[1, 0], [3, 2, 2]]
