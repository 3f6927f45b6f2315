"""``tokenbooth bench loadgen``: how much load one harness process drives, against a free server.

The server is Debian's nginx with one worker process returning a canned OpenAI stream
(:mod:`loadgen.canned_server`): it writes the whole body at once, so the true TTFT and gaps are
~0 and what the harness reports is its own overhead; a raw-socket probe gives the loopback
round trip that sits under every TTFT. Phases, each a real ``tokenbooth sweep`` (constant
open-loop arrivals) in a subprocess, bounded in requests and seconds:

1. a rate ladder with one process: the ceiling is the highest rate achieved within 2 % with a
   small send lag (p95 <= ``LAG_OK_S``);
2. 25/50/100 % of that ceiling: TTFT and ITL error, alternating with GuideLLM at the same rate
   where GuideLLM is installed (its own venv under ``~/.cache/tokenbooth/peers/``);
3. the ladder again with ``--workers N``: do workers scale up to the cores?

It also prints the calibration gate's estimate (:mod:`loadgen.calibration`, closed-loop
saturation) beside the ceiling the ladder held: their ratio is what ``SAFETY`` must stay under.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from loadgen.calibration import SAFETY
from loadgen.canned_server import CANNED_MODEL, CannedServer, canned_nginx
from loadgen.results import Point, RunDir

__all__ = ["GUIDELLM_VERSION", "LAG_OK_S", "Row", "run_loadgen_bench"]

LAG_OK_S: Final = 0.010  # a send this late is no longer the offered schedule
_ACHIEVED_OK: Final = 0.98
GUIDELLM_VERSION: Final = "0.8.1"

_SPEC: Final = """
[run]
name = "loadgen-ceiling"
duration_s = {duration}
warmup_s = 1.0
max_requests = {max_requests}
min_samples = 5
saturation_s = 0
timeslice_s = 0
request_timeout_s = 30.0

[target]
kind = "remote"
urls = ["{url}"]
server = "openai"
engine = "fake"
ready_path = "/health"

[load]
mode = "rate"
rate = [{rates}]
arrival = "constant"

[workload]
api = "chat"
input_tokens = {{ dist = "fixed", value = 16 }}
output_tokens = {{ dist = "fixed", value = {chunks} }}
"""


@dataclass(frozen=True)
class Row:
    """One measured point of one tool."""

    tool: str
    processes: int
    offered_rps: float
    achieved_rps: float
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    lag_p95_ms: float
    cpu_percent: float

    @property
    def holds(self) -> bool:
        """Whether the offered rate was achieved (within 2 %) and sent on schedule."""
        return (
            self.achieved_rps >= _ACHIEVED_OK * self.offered_rps
            and not self.lag_p95_ms > LAG_OK_S * 1000
        )


def raw_rtt_ms(url: str, samples: int = 200) -> float:
    """Median time from a raw socket's request write to the first response byte (GET /health)."""
    host, port = url.removeprefix("http://").split(":")
    req = f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    times = []
    with socket.create_connection((host, int(port))) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(samples):
            t0 = time.perf_counter()
            s.sendall(req)
            data = s.recv(65536)
            times.append(time.perf_counter() - t0)
            while b"ok" not in data:  # the rest of a split response
                data += s.recv(65536)
    return 1000 * statistics.median(times)


def _sweep(
    tmp: Path, name: str, server: CannedServer, rates: list[float], duration: float, workers: int
) -> list[Row]:
    max_req = int(max(rates) * (duration + 1.0) * 1.2) + 100
    spec = tmp / f"{name}.toml"
    spec.write_text(
        _SPEC.format(
            duration=duration,
            max_requests=max_req,
            url=server.url,
            rates=", ".join(f"{r:g}" for r in rates),
            chunks=server.chunks,
        )
    )
    out = tmp / name
    cmd = [sys.executable, "-m", "service.cli", "sweep", str(spec), "--output", str(out)]
    cmd += ["--quiet"] + (["--workers", str(workers)] if workers > 0 else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pts = RunDir(out).points().sort_values(Point.OFFERED_RPS)
    return [_harness_row(r, max(workers, 1)) for _, r in pts.iterrows()]


def _harness_row(r: Any, processes: int) -> Row:
    # r: one points.csv row (a pandas Series; pandas itself is not in the serving image)
    return Row(
        "tokenbooth",
        processes,
        float(r[Point.OFFERED_RPS]),
        float(r[Point.ACHIEVED_RPS]),
        float(r[Point.OUTPUT_TOKENS_PER_S]),
        1000 * float(r[Point.TTFT_P50_S]),
        1000 * float(r[Point.TTFT_P95_S]),
        1000 * float(r[Point.ITL_P50_S]),
        1000 * float(r[Point.LAG_P95_S]),
        float(r[Point.LOADGEN_CPU_PERCENT]),
    )


def guidellm_python() -> Path | None:
    """The interpreter of the cached GuideLLM venv, or None when it is not installed."""
    py = Path.home() / ".cache/tokenbooth/peers" / f"guidellm-{GUIDELLM_VERSION}" / "bin/python"
    return py if py.exists() else None


def _install_guidellm() -> Path | None:
    venv = Path.home() / ".cache/tokenbooth/peers" / f"guidellm-{GUIDELLM_VERSION}"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, f"guidellm=={GUIDELLM_VERSION}"], check=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"GuideLLM not installed ({exc}): its rows are left out", file=sys.stderr)
        return None
    return guidellm_python()


def _guidellm(
    py: Path, tokenizer: Path, tmp: Path, server: CannedServer, rate: float, duration: float
) -> Row | str:
    """One GuideLLM constant-rate benchmark, or the reason it gave none."""
    out = tmp / f"guidellm-{rate:g}.json"
    cmd = [
        str(py),
        "-m",
        "guidellm",
        "run",
        "--backend",
        f"kind=openai_http,target={server.url},model={CANNED_MODEL}",
        "--profile",
        f"kind=constant,rate={rate:g}",
        "--constraint",
        f"kind=max_duration,seconds={duration:g}",
        "--tokenizer",
        f"kind=huggingface_auto,model={tokenizer}",
        "--data",
        f"kind=synthetic_text,prompt_tokens=16,output_tokens={server.chunks}",
        "--output",
        f"kind=json,path={out}",
        "--disable-console-interactive",
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 120)
    if proc.returncode != 0 or not out.exists():
        return f"guidellm exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
    m = json.loads(out.read_text())["benchmarks"][0]["metrics"]

    def ok(key: str) -> dict[str, Any]:
        got: dict[str, Any] = m[key]["successful"]
        return got

    def pct(key: str, p: str) -> float:
        return float(ok(key)["percentiles"][p])

    del started
    # CPU % is left out: GuideLLM spawns its own worker processes, not attributed here.
    return Row(
        "guidellm",
        1,
        rate,
        float(ok("requests_per_second")["mean"]),
        float(ok("output_tokens_per_second")["mean"]),
        pct("time_to_first_token_ms", "p50"),
        pct("time_to_first_token_ms", "p95"),
        pct("inter_token_latency_ms", "p50"),
        math.nan,
        math.nan,
    )


def _gate_saturation(chunks: int) -> float:
    """The calibration gate's own estimate (closed-loop saturation, req/s at ``chunks``), measured
    the way a sweep measures it, in a fresh process (it imports Locust, which patches gevent)."""
    code = (
        "import locust, sys\n"
        "from loadgen.calibration import measure_ceiling\n"
        f"print(measure_ceiling(1.0).rps({chunks}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _ceiling(rows: list[Row]) -> float:
    held = [r.offered_rps for r in rows if r.holds]
    return max(held) if held else math.nan


def _print_table(rows: list[Row], rtt_ms: float) -> None:
    head = (
        f"{'tool':<11}{'procs':>5}{'offered/s':>10}{'achieved/s':>11}{'ach/off':>8}"
        f"{'tokens/s':>10}{'TTFT p50':>9}{'TTFT p95':>9}{'err p50':>8}{'ITL p50':>8}"
        f"{'lag p95':>8}{'CPU %':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.tool:<11}{r.processes:>5}{r.offered_rps:>10.0f}{r.achieved_rps:>11.1f}"
            f"{r.achieved_rps / r.offered_rps:>8.3f}{r.tokens_per_s:>10.0f}"
            f"{r.ttft_p50_ms:>9.2f}{r.ttft_p95_ms:>9.2f}{r.ttft_p50_ms - rtt_ms:>8.2f}"
            f"{r.itl_p50_ms:>8.3f}{r.lag_p95_ms:>8.2f}{r.cpu_percent:>7.0f}"
        )


def run_loadgen_bench(
    *,
    chunks: int = 64,
    rates: list[float],
    duration_s: float = 4.0,
    workers: int = 2,
    guidellm: bool = True,
    tokenizer: Path | None = None,
) -> int:
    """Run the phases and print one table (times in ms; err = TTFT minus the raw socket RTT)."""
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tb-bench-loadgen-") as d, canned_nginx(chunks) as srv:
        tmp = Path(d)
        rtt = raw_rtt_ms(srv.url)
        gate = _gate_saturation(chunks)
        ladder = _sweep(tmp, "ladder-1", srv, rates, duration_s, 0)
        rows += ladder
        ceiling = _ceiling(ladder)
        gpy = (guidellm_python() or _install_guidellm()) if guidellm else None
        if guidellm and gpy is not None and tokenizer is None:
            notes.append("GuideLLM left out: no tokenizer (build the default model first)")
            gpy = None
        # No rung held: the fractions are of the best rate achieved instead, and say so.
        basis = ceiling if not math.isnan(ceiling) else max(r.achieved_rps for r in ladder)
        if math.isnan(ceiling):
            notes.append(f"no ladder rate held; 25/50/100 % rows are of {basis:.0f} req/s achieved")
        if basis > 0:
            for frac in (0.25, 0.5, 1.0):
                rate = round(basis * frac, 1)
                rows += _sweep(tmp, f"at-{frac:g}", srv, [rate], duration_s, 0)
                if gpy is not None and tokenizer is not None:
                    got = _guidellm(gpy, tokenizer, tmp, srv, rate, duration_s)
                    if isinstance(got, str):
                        notes.append(got)
                    else:
                        rows.append(got)
        multi: list[Row] = []
        if workers > 1:
            top = max(rates)
            wrates = sorted({*rates, top * 1.5, top * float(workers)})
            multi = _sweep(tmp, f"ladder-{workers}", srv, wrates, duration_s, workers)
            rows += multi
    print(
        f"bench loadgen: canned nginx (1 worker process), {chunks} chunks per response, "
        f"constant arrivals, {duration_s:g} s per point, {os.cpu_count()} CPUs; "
        f"raw socket RTT p50 {rtt:.3f} ms (true TTFT ~0: err = TTFT p50 - RTT)"
    )
    _print_table(rows, rtt)
    multi_ceiling = _ceiling(multi) if multi else math.nan
    print(
        f"ceiling, 1 process: {ceiling:.0f} req/s = {ceiling * chunks:.0f} streamed tokens/s "
        f"(goal 1000 req/s and 50000 tokens/s)"
    )
    print(
        f"calibration gate: closed-loop saturation {gate:.0f} req/s at {chunks} chunks; the "
        f"ladder held {ceiling / gate:.2f} of it (the gate allows {SAFETY:g} of it per process)"
    )
    if multi:
        print(
            f"ceiling, --workers {workers}: {multi_ceiling:.0f} req/s "
            f"({multi_ceiling / ceiling:.2f}x one process; linear would be {workers}x, "
            f"nginx holds one of {os.cpu_count()} cores)"
        )
    half = [r for r in rows if r.tool == "tokenbooth" and r.processes == 1]
    half = [r for r in half if abs(r.offered_rps - round(basis / 2, 1)) < 0.05]
    if half:
        print(f"TTFT error at 50 % of the ceiling: {half[0].ttft_p50_ms - rtt:.3f} ms (goal <= 1)")
    for note in notes:
        print(f"note: {note}")
    return 0
