"""A Locust worker process for ``tokenbooth sweep --workers N`` (Locust's distributed mode).

The master (the sweep runner) sends each worker its share of a point in a ``tb_point``
message: the workload, the replica URLs, the time window and, for open loop, its slice of the
global arrival schedule (for closed loop, its users' places on the start ramp). The worker's
users send and measure the requests; rows stream back in ``tb_rows`` messages and a final
``tb_done`` carries the worker's own CPU use, so the master can tell when the load generator
itself is the bottleneck.

Run by the harness as ``python -m loadgen.worker --master-port P``, or on any host as
``tokenbooth loadgen-worker --master-host H`` for a ``tokenbooth sweep --master`` (other hosts,
a Kubernetes Deployment).
"""

from __future__ import annotations

import argparse
import socket
import time
from dataclasses import asdict
from typing import Any

import gevent
import locust
import psutil
from locust.env import Environment

from loadgen.gcguard import GcGuard
from loadgen.sessions import SessionPlan
from loadgen.spec import LengthDist
from loadgen.users import Balancer, ClosedLoopUser, OpenLoopUser, PointContext
from loadgen.workload import PromptItem

__all__ = ["MSG_DONE", "MSG_POINT", "MSG_ROWS", "main", "point_message", "serve"]

MSG_POINT = "tb_point"
MSG_ROWS = "tb_rows"
MSG_DONE = "tb_done"
_FLUSH_S = 0.5


def point_message(ctx: PointContext, urls: list[str], balance: str) -> dict[str, Any]:
    """Serialize a point's shared context for a worker.

    The runner sets ``schedule`` (and a trace's ``schedule_items``), ``user_starts``,
    ``max_requests``, ``sent_warmup`` (its share of the warm-up already sent, which counts
    against the worker's warm-up budget), ``next_index`` and ``worker`` per worker.
    """
    return {
        "api": ctx.api,
        "model": ctx.model,
        "items": [
            {
                "max_tokens": i.max_tokens,
                "prompt": i.prompt,
                "messages": list(i.messages) if i.messages is not None else None,
                "input_tokens": i.input_tokens,
            }
            for i in ctx.items
        ],
        "urls": urls,
        "balance": balance,
        "ignore_eos": ctx.ignore_eos,
        "temperature": ctx.temperature,
        "timeout_s": ctx.timeout_s,
        "measure_from": ctx.measure_from,
        "stop_at": ctx.stop_at,
        "max_requests": ctx.max_requests,
        "sent_warmup": ctx.sent_warmup,
        "schedule": ctx.schedule,
        "schedule_items": ctx.schedule_items,
        "headers": ctx.headers,
        "next_index": ctx.next_index,
        "user_starts": ctx.user_starts,
        "think_time": None if ctx.think_time is None else asdict(ctx.think_time),
        "seed": ctx.seed,
        "sessions": None if ctx.sessions is None else [s.to_dict() for s in ctx.sessions],
        "turn_think_time": None if ctx.turn_think_time is None else asdict(ctx.turn_think_time),
        "worker": ctx.worker,
    }


def _context(data: dict[str, Any]) -> PointContext:
    items = [
        PromptItem(
            max_tokens=d["max_tokens"],
            prompt=d["prompt"],
            messages=tuple(d["messages"]) if d["messages"] is not None else None,
            input_tokens=d["input_tokens"],
        )
        for d in data["items"]
    ]
    return PointContext(
        api=data["api"],
        model=data["model"],
        items=items,
        balancer=Balancer(data["urls"], data["balance"]),
        ignore_eos=data["ignore_eos"],
        temperature=data["temperature"],
        timeout_s=data["timeout_s"],
        measure_from=data["measure_from"],
        stop_at=data["stop_at"],
        max_requests=data["max_requests"],
        sent_warmup=data.get("sent_warmup", 0),  # absent from an older master's message
        schedule=data["schedule"],
        schedule_items=data.get("schedule_items"),
        headers=data["headers"],
        next_index=data["next_index"],
        user_starts=data["user_starts"],
        think_time=None if data["think_time"] is None else LengthDist(**data["think_time"]),
        seed=data["seed"],
        sessions=(
            None
            if data.get("sessions") is None
            else [SessionPlan.from_dict(d) for d in data["sessions"]]
        ),
        turn_think_time=(
            None if data.get("turn_think_time") is None else LengthDist(**data["turn_think_time"])
        ),
        worker=data["worker"],
    )


def serve(master_host: str, master_port: int) -> int:
    """Connect to the master and serve points until it quits; 0 then.

    Locust retries the connection for about five minutes before it gives up (an error), so
    workers may start before their master does.
    """
    env = Environment(user_classes=[ClosedLoopUser, OpenLoopUser], events=locust.events)
    runner = env.create_worker_runner(master_host, master_port)
    proc = psutil.Process()

    def on_point(environment: Environment, msg: Any, **_: Any) -> None:
        ctx = _context(msg.data)
        environment.tokenbooth = ctx  # type: ignore[attr-defined]
        environment.tokenbooth_user_seq = 0  # type: ignore[attr-defined]
        gevent.spawn(_report, ctx)

    def _report(ctx: PointContext) -> None:
        cpu0, wall0 = proc.cpu_times(), time.monotonic()
        sent = 0
        hard_stop = ctx.stop_at + ctx.timeout_s + 5.0
        with GcGuard() as guard:
            while True:
                gevent.sleep(_FLUSH_S)
                guard.tick()
                done = (ctx.stopped or time.time() >= ctx.stop_at) and ctx.in_flight == 0
                if len(ctx.rows) > sent:
                    runner.send_message(MSG_ROWS, {"rows": ctx.rows[sent:]})
                    sent = len(ctx.rows)
                if done or time.time() >= hard_stop:
                    break
        cpu1 = proc.cpu_times()
        wall = max(time.monotonic() - wall0, 1e-9)
        cpu = 100.0 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall
        host = socket.gethostname()
        report = {"cpu_percent": cpu, "rows": sent, "worker": ctx.worker, "host": host}
        runner.send_message(MSG_DONE, report)

    runner.register_message(MSG_POINT, on_point)
    runner.greenlet.join()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m loadgen.worker --master-port P``: the sweep's own local workers."""
    parser = argparse.ArgumentParser(prog="python -m loadgen.worker")
    parser.add_argument("--master-host", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, required=True)
    args = parser.parse_args(argv)
    return serve(args.master_host, args.master_port)


if __name__ == "__main__":
    raise SystemExit(main())
