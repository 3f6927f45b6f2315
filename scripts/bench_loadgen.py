"""Calibrate the load harness against the fake engine: does it measure what is really there?

Runs ``tokenbooth sweep`` on the fake engine (TTFT 50 ms, ITL 10 ms by default) and prints,
side by side:

1. closed loop, concurrency 1: the harness's TTFT and ITL against the configured values and
   against the server's own TTFT histogram for the same window;
2. open loop (Poisson) at a rate the service sustains: achieved vs offered rate;
3. open loop above capacity: latency from actual send vs coordinated-omission-corrected
   latency (from the scheduled send), which must grow.

Usage: ``python -m scripts.bench_loadgen [--ttft-ms 50 --itl-ms 10 --duration 10]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from loadgen.results import Col, Point, RunDir

SPEC = """
[run]
name = "calibrate"
duration_s = {duration}
warmup_s = 1.0
max_requests = 5000
min_samples = 5
lag_threshold_s = 0.05

[target]
kind = "local"
engine = "fake"

[server]
configs = [
  {{ replicas = 1, max_batch_size = {batch}, max_batch_delay_ms = {delay}, batch_workers = 1 }},
]
env = {{ fake_ttft_ms = "{ttft}", fake_itl_ms = "{itl}" }}

[load]
mode = "{mode}"
concurrency = [1]
rate = [{rates}]
arrival = "{arrival}"

[workload]
api = "completions"
input_tokens = {{ dist = "fixed", value = 16 }}
output_tokens = {{ dist = "fixed", value = {out} }}
"""


def _sweep(tmp: Path, name: str, **fmt: object) -> RunDir:
    spec = tmp / f"{name}.toml"
    spec.write_text(SPEC.format(**fmt))
    out = tmp / name
    cmd = [sys.executable, "-m", "service.cli", "sweep", str(spec), "--output", str(out), "--quiet"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return RunDir(out)


def main() -> int:
    """Run the three calibrations and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--itl-ms", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=10.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        common = {"ttft": a.ttft_ms, "itl": a.itl_ms, "duration": a.duration}
        closed = _sweep(
            tmp,
            "closed",
            mode="concurrency",
            rates="1.0",
            batch=8,
            delay=0,
            out=16,
            arrival="poisson",
            **common,
        )
        req = closed.requests()
        pts = closed.points().iloc[0]
        ttft = req[Col.TTFT_S].to_numpy() * 1000
        itl = np.concatenate(req[Col.ITL_S].to_numpy()) * 1000
        print(
            f"closed loop, concurrency 1, fake TTFT {a.ttft_ms:g} ms / ITL {a.itl_ms:g} ms, "
            f"n={len(req)}"
        )
        print(
            f"  harness TTFT   p50 {np.median(ttft):7.2f} ms  mean {ttft.mean():7.2f} ms  "
            f"(p50 - configured: {np.median(ttft) - a.ttft_ms:+.2f} ms)"
        )
        print(
            f"  harness ITL    p50 {np.median(itl):7.2f} ms  mean {itl.mean():7.2f} ms  "
            f"(p50 - configured: {np.median(itl) - a.itl_ms:+.2f} ms)"
        )
        server_ttft = pts[Point.SERVER_TTFT_MEAN_S] * 1000
        print(
            f"  server TTFT histogram mean {server_ttft:7.2f} ms  "
            f"(harness mean - server mean: {ttft.mean() - server_ttft:+.2f} ms)"
        )
        # Holding a rate: a constant 20 req/s schedule against a configuration with room to
        # spare (batches of up to 16): sent on schedule, and completed at the offered rate.
        steady = _sweep(
            tmp,
            "steady",
            mode="rate",
            rates="20.0",
            batch=16,
            delay=5,
            out=16,
            arrival="constant",
            **common,
        )
        s = steady.points().iloc[0]
        sreq = steady.requests()
        sent_span = sreq[Col.SENT_AT].max() - sreq[Col.SENT_AT].min()
        sent_rate = (len(sreq) - 1) / sent_span if sent_span > 0 else float("nan")
        print("open loop (constant), 20 req/s, batch size 16:")
        print(
            f"  sent {sent_rate:6.2f} req/s ({sent_rate / 20.0:.3f}x)  "
            f"achieved {s[Point.ACHIEVED_RPS]:6.2f} req/s ({s[Point.ACHIEVED_RPS] / 20.0:.3f}x; "
            f"window includes draining the last requests)  lag p95 "
            f"{s[Point.LAG_P95_S] * 1000:.2f} ms  valid={s[Point.VALID]}"
        )
        # One request at a time takes ttft + 15 * itl: with batch size 1 and one worker the
        # service carries about 1 / that many requests per second.
        per_req_s = (a.ttft_ms + 15 * a.itl_ms) / 1000
        capacity = 1 / per_req_s
        rates = [round(0.6 * capacity, 3), round(1.5 * capacity, 3)]
        open_run = _sweep(
            tmp,
            "open",
            mode="rate",
            rates=", ".join(map(str, rates)),
            batch=1,
            delay=0,
            out=16,
            arrival="poisson",
            **common,
        )
        p = open_run.points().sort_values(Point.LOAD_LEVEL)
        print(f"open loop (Poisson), batch size 1: capacity about {capacity:.2f} req/s")
        for _, r in p.iterrows():
            realized = r[Point.N_REQUESTS] / a.duration
            print(
                f"  offered {r[Point.OFFERED_RPS]:6.2f} req/s (this Poisson draw: {realized:.2f})  "
                f"achieved {r[Point.ACHIEVED_RPS]:6.2f} "
                f"({r[Point.ACHIEVED_RPS] / r[Point.OFFERED_RPS]:.3f}x)  "
                f"TTFT p95 {r[Point.TTFT_P95_S] * 1000:8.1f} ms  "
                f"corrected {r[Point.TTFT_SCHED_P95_S] * 1000:8.1f} ms  "
                f"e2e p95 {r[Point.E2E_P95_S] * 1000:8.1f} ms  "
                f"corrected {r[Point.E2E_SCHED_P95_S] * 1000:8.1f} ms  "
                f"lag p95 {r[Point.LAG_P95_S] * 1000:6.2f} ms  valid={r[Point.VALID]}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
