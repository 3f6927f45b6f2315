"""``tokenbooth sweep SPEC.toml [--output RUN_DIR]``: registered through entry points.

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

__all__ = ["register", "run"]


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
    p.add_argument("--quiet", action="store_true", help="no live progress display")
    p.set_defaults(func=run)


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
    runner = SweepRunner(spec, out, workers=args.workers, progress=_Progress(args.quiet))
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
