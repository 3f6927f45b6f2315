"""``tokenbooth sweep SPEC.toml [--output RUN_DIR]`` and ``tokenbooth loadgen-worker``:
registered through entry points.

This module stays import-light (no Locust): the ``tokenbooth`` parser loads it for every
command, and Locust's gevent monkey-patching must only happen when a sweep actually runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadgen.distributed import (
    DEFAULT_MASTER_PORT,
    DEFAULT_WORKERS_TIMEOUT_S,
    MasterOptions,
    check_external_workers,
)
from service.errors import TokenboothError

__all__ = ["master_options", "register", "register_worker", "run", "run_worker"]

# --master exists for workers on other hosts: by default it listens on every interface.
_ANY_ADDRESS = "0.0.0.0"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sweep`` subcommand."""
    p = subparsers.add_parser(
        "sweep",
        help="run a load sweep over replicas, batch settings and load levels",
        description="Runs every point of SPEC (see loadgen/examples/sweep.toml) and writes one "
        "run directory; prints its path as the last line. Re-running with the same --output "
        "resumes an interrupted sweep.",
    )
    p.add_argument("spec", type=Path, help="sweep spec (TOML)")
    p.add_argument(
        "--output", type=Path, default=None, help="run directory (default: runs/<name>-<time>)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Locust distributed mode: 1 master + N worker processes (overrides [load] workers)",
    )
    dist = p.add_argument_group(
        "workers on other hosts (Locust distributed mode across machines, e.g. Kubernetes)"
    )
    dist.add_argument(
        "--master",
        action="store_true",
        help="run only the Locust master: it spawns no workers and waits for --expect-workers "
        "`tokenbooth loadgen-worker` processes to connect (the target must be remote)",
    )
    dist.add_argument(
        "--expect-workers",
        type=int,
        default=None,
        metavar="N",
        help="with --master: how many workers to wait for (required)",
    )
    dist.add_argument(
        "--master-bind",
        default=None,
        metavar="ADDR",
        help=f"address the master listens on (default: {_ANY_ADDRESS} with --master, "
        "else 127.0.0.1)",
    )
    dist.add_argument(
        "--master-port",
        type=int,
        default=None,
        metavar="PORT",
        help=f"port the master listens on (default: {DEFAULT_MASTER_PORT} with --master, "
        "else a free one)",
    )
    dist.add_argument(
        "--workers-timeout",
        type=float,
        default=DEFAULT_WORKERS_TIMEOUT_S,
        metavar="S",
        help="fail when the workers have not all connected within S seconds "
        f"(default: {DEFAULT_WORKERS_TIMEOUT_S:g})",
    )
    p.add_argument("--quiet", action="store_true", help="no live progress display")
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 2) a point that asks more load than the harness's calibrated ceiling "
        "(loadgen.calibration); without it such points only warn",
    )
    p.set_defaults(func=run)


def register_worker(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``loadgen-worker`` subcommand: one Locust worker for ``sweep --master``."""
    p = subparsers.add_parser(
        "loadgen-worker",
        help="one Locust worker for a `tokenbooth sweep --master` on another host",
        description="Connects to the sweep's Locust master, sends each point's share of the "
        "load to the spec's target URLs (which must be reachable from this host), and exits 0 "
        "when the master ends the run. Retries the connection for about five minutes.",
    )
    p.add_argument("--master-host", required=True, help="host name or address of the master")
    p.add_argument(
        "--master-port",
        type=int,
        default=DEFAULT_MASTER_PORT,
        help=f"the master's port (default: {DEFAULT_MASTER_PORT})",
    )
    p.set_defaults(func=run_worker)


def master_options(args: argparse.Namespace) -> tuple[MasterOptions, int | None]:
    """The master's options and worker count (None: the spec's) from ``sweep``'s flags.

    Raises:
        TokenboothError: a combination that cannot run (workers both spawned and expected,
            external workers without a count, a port out of range).
    """
    if args.master_port is not None and not 0 < args.master_port < 65536:
        raise TokenboothError(f"--master-port must be in 1..65535, got {args.master_port}")
    if args.workers_timeout <= 0:
        raise TokenboothError(f"--workers-timeout must be > 0, got {args.workers_timeout:g}")
    if not args.master:
        if args.expect_workers is not None:
            raise TokenboothError("--expect-workers applies to --master (external workers)")
        options = MasterOptions(
            bind=args.master_bind or MasterOptions.bind,
            port=args.master_port or 0,
            timeout_s=args.workers_timeout,
        )
        return options, args.workers
    if args.workers is not None:
        raise TokenboothError(
            "--master spawns no workers: use --expect-workers N instead of --workers N"
        )
    if args.expect_workers is None or args.expect_workers < 1:
        raise TokenboothError("--master needs --expect-workers N (N >= 1): the workers to wait for")
    options = MasterOptions(
        bind=args.master_bind or _ANY_ADDRESS,
        port=args.master_port or DEFAULT_MASTER_PORT,
        external=True,
        timeout_s=args.workers_timeout,
    )
    return options, args.expect_workers


def run_worker(args: argparse.Namespace) -> int:
    """Serve points for the master at ``--master-host``; 0 once it ends the run."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from loadgen.worker import serve  # imports Locust (gevent patching)

    try:
        return serve(args.master_host, args.master_port)
    except ConnectionError:
        raise TokenboothError(
            f"no Locust master answered at {args.master_host}:{args.master_port}"
        ) from None


class _Progress:
    """Live progress: a rich display on a terminal, one line per point otherwise."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.live: Any = None
        self.current = ""
        self.labels: dict[str, str] = {}  # point key -> its label (stage points overlap)
        self.started = time.monotonic()

    def __call__(self, ev: dict[str, Any]) -> None:
        from rich.table import Table

        from loadgen.results import Col, Point

        kind = ev["event"]
        if kind == "point_start":
            self.current = f"point {ev['point_id']}: {ev['config']} {ev['level']}"
            self.labels[ev["key"]] = self.current
            self.started = time.monotonic()
            if self.live is not None:  # a profile's next stage opens before the last is done
                self.live.stop()
                self.live = None
            if self.console.is_terminal and not self.quiet:
                from rich.live import Live

                self.live = Live(console=self.console, refresh_per_second=4, transient=True)
                self.live.start()
        elif kind == "point_progress" and self.live is not None:
            rows = ev["rows"]
            ok = [r for r in rows if r[Col.OK]]
            ttfts = sorted(r[Col.TTFT_S] for r in ok if not math.isnan(r[Col.TTFT_S]))
            elapsed = max(time.monotonic() - self.started, 1e-9)
            tokens = sum(r[Col.COMPLETION_TOKENS] for r in ok)
            table = Table(title=self.current, show_header=True)
            for col in ("requests", "errors", "in flight", "tok/s", "TTFT p50", "TTFT p95"):
                table.add_column(col, justify="right")

            def p(q: float) -> str:
                if not ttfts:
                    return "-"
                return f"{ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] * 1000:.0f} ms"

            table.add_row(
                str(len(rows)),
                str(len(rows) - len(ok)),
                str(ev["in_flight"]),
                f"{tokens / elapsed:.1f}",
                p(0.5),
                p(0.95),
            )
            self.live.update(table)
        elif kind in ("point_done", "point_failed"):
            if self.live is not None:
                self.live.stop()
                self.live = None
            if kind == "point_failed":
                self.console.print(f"[red]{ev['key']}: {ev['status']}[/red] {ev['detail']}")
                return
            s = ev["summary"]
            flag = "" if s[Point.VALID] else f" [yellow]INVALID: {s[Point.INVALID_REASON]}[/yellow]"
            self.console.print(
                f"{self.labels.pop(ev['key'], self.current)}: "
                f"{s[Point.N_OK]}/{s[Point.N_REQUESTS]} ok, "
                f"{s[Point.ACHIEVED_RPS]:.2f} req/s, {s[Point.OUTPUT_TOKENS_PER_S]:.1f} tok/s, "
                f"TTFT p50 {s[Point.TTFT_P50_S] * 1000:.0f} ms "
                f"p95 {s[Point.TTFT_P95_S] * 1000:.0f} ms{flag}",
                highlight=False,
            )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Run the sweep; print the run directory last."""
    from loadgen.spec import load_spec

    spec = load_spec(args.spec)  # errors name key and line, before anything starts
    master, workers = master_options(args)
    # Before the run dir exists: a --master sweep of local replicas is refused outright.
    check_external_workers(spec, master, spec.load.workers if workers is None else workers)
    from loadgen.runner import SweepRunner  # imports Locust (gevent patching)

    out = args.output or Path("runs") / f"{spec.run.name}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "sweep.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    root.addHandler(console)
    # SIGTERM behaves like Ctrl-C: unwind, stop replicas, keep what was written (resumable).
    signal.signal(signal.SIGTERM, _interrupt)
    runner = SweepRunner(
        spec,
        out,
        workers=workers,
        master=master,
        progress=_Progress(args.quiet),
        strict=args.strict,
    )
    try:
        path = runner.execute()
    except KeyboardInterrupt:
        print(
            f"interrupted; resume with: tokenbooth sweep {args.spec} --output {out}",
            file=sys.stderr,
        )
        return 130
    finally:
        root.removeHandler(handler)
        root.removeHandler(console)
        handler.close()
    print(path)
    return 0
