"""Synthetic run directories with known answers, written through ``loadgen.results.RunDir``.

Every client latency a test checks is placed exactly: the samples of a point are built so that
numpy's 95th percentile equals the requested value. Server metric deltas follow a known batch
service time (``ServiceParams``), so a fitted capacity model can be checked against the truth.

Scenarios:

* :func:`write_capacity_run`: open loop, constant arrivals, three server configurations:
  ``int8 ×1`` with a knee at 4 req/s, an SLO crossing at 5 + 4/9 req/s and an invalid
  (lagging) point above it; ``int8 ×2`` crossing at 10 + 10/7 req/s; ``float16 ×1`` whose TTFT
  p95 is 0.2 s x rate, crossing the 1 s SLO at exactly 5 req/s. Target load 9 req/s.
* :func:`write_scaling_run`: closed loop, queue-consistent: throughput and TTFT of one and two
  replicas follow the batch service time exactly (known two-replica throughput).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.results import Col, Point, RunDir, Srv
from telemetry import names

T0 = 1_700_000_000.0  # epoch of the first point
DURATION_S = 20.0
WARMUP_S = 2.0
SLO_TTFT_P95_S = 1.0


@dataclass(frozen=True)
class ServiceParams:
    """Known batch service time: prefill ``p0 + p1 b``, one decode step ``s0 + s1 b``."""

    p0: float = 0.020
    p1: float = 0.004
    s0: float = 0.010
    s1: float = 0.002
    overhead_s: float = 0.003  # client TTFT minus server TTFT
    tokens: int = 16

    def prefill(self, b: float) -> float:
        return self.p0 + self.p1 * b

    def step(self, b: float) -> float:
        return self.s0 + self.s1 * b

    def decode(self, b: float) -> float:
        return (self.tokens - 1) * self.step(b)

    def batch_time(self, b: float) -> float:
        return self.prefill(b) + self.decode(b)


SERVICE = ServiceParams()


@dataclass
class SynthPoint:
    """One sweep point with placed statistics."""

    config_id: str
    load_level: float
    achieved_rps: float
    ttft_p95_s: float
    load_mode: str = "rate"
    replicas: int = 1
    max_batch_size: int = 8
    max_batch_delay_ms: float = 5.0
    batch_workers: int = 1
    intra_threads: int = 1
    quantization: str = "int8"
    batch_policy: str | None = None  # None: not recorded, as in runs from before policies
    spare_workers: int | None = None  # None: not recorded, as in runs from before spares
    itl_s: float = 0.02
    tokens: int = 16
    errors: int = 0
    lag_s: float = 0.0
    valid: bool = True
    invalid_reason: str = ""
    spread: float = 0.2  # relative spread of TTFT samples around their p95
    # Closed loop only: users send in bursts, 0.3 ms apart, one burst per cycle (lockstep).
    lockstep: bool = False
    # server side
    batch_size: float = 1.0
    server_ttft_mean_s: float | None = None
    queue_wait_mean_s: float = 0.001
    formation_mean_s: float = 0.001
    gpu_memory_bytes: float | None = None
    cpu_per_busy_s: float | None = None  # process CPU seconds per batch busy second
    service: ServiceParams = field(default_factory=ServiceParams)


def exact_p95_samples(p95: float, n: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` positive samples, shuffled, whose numpy 95th percentile is exactly ``p95``."""
    z = np.linspace(-1.0, 1.0, n)
    z = z - np.quantile(z, 0.95)
    x = p95 * (1.0 + spread * z)
    assert (x > 0).all()
    rng.shuffle(x)
    return x


def _request_rows(
    p: SynthPoint, pid: int, start: float, rng: np.random.Generator
) -> list[dict[str, Any]]:
    n_ok = round(p.achieved_rps * DURATION_S)
    ttft = exact_p95_samples(p.ttft_p95_s, n_ok, p.spread, rng)
    itl = p.itl_s * (1.0 + 0.1 * rng.uniform(-1, 1, size=n_ok))
    gap = DURATION_S / max(n_ok, 1)
    finished = start + WARMUP_S + gap * (np.arange(n_ok) + 0.5 + rng.uniform(-0.2, 0.2, n_ok))
    open_loop = p.load_mode == "rate"
    rows: list[dict[str, Any]] = []
    users = max(1, int(p.load_level))
    cycle_s = DURATION_S / max(1, math.ceil(n_ok / users))
    for i in range(n_ok):
        e2e = float(ttft[i] + (p.tokens - 1) * itl[i])
        sent = float(finished[i] - e2e)
        if p.lockstep and not open_loop:
            burst, user = divmod(i, users)
            sent = start + WARMUP_S + burst * cycle_s + user * 0.0003
            finished[i] = sent + e2e
        lag = p.lag_s if open_loop else 0.0
        rows.append(
            {
                Col.POINT_ID: pid,
                Col.REQUEST_ID: f"r{pid}-{i}",
                Col.TRACE_ID: f"{pid:016x}{i:016x}",
                Col.TARGET: f"http://127.0.0.1:{8000 + i % p.replicas}",
                Col.USER: -1 if open_loop else i % max(1, int(p.load_level)),
                Col.SCHEDULED_AT: sent - lag if open_loop else math.nan,
                Col.SENT_AT: sent,
                Col.FIRST_TOKEN_AT: sent + float(ttft[i]),
                Col.FINISHED_AT: float(finished[i]),
                Col.SCHEDULE_LAG_S: lag,
                Col.TTFT_S: float(ttft[i]),
                Col.TTFT_FROM_SCHEDULE_S: float(ttft[i]) + lag if open_loop else math.nan,
                Col.E2E_S: e2e,
                Col.E2E_FROM_SCHEDULE_S: e2e + lag if open_loop else math.nan,
                Col.TPOT_S: float(itl[i]),
                Col.ITL_S: [float(itl[i])] * (p.tokens - 1),
                Col.PROMPT_TOKENS: 64,
                Col.COMPLETION_TOKENS: p.tokens,
                Col.STREAMED_CHUNKS: p.tokens,
                Col.USAGE_MISMATCH: False,
                Col.STATUS: 200,
                Col.OK: True,
                Col.ERROR: "",
                Col.FINISH_REASON: "length",
            }
        )
    for j in range(p.errors):
        t = start + WARMUP_S + DURATION_S * (j + 0.5) / p.errors
        rows.append(
            {
                Col.POINT_ID: pid,
                Col.REQUEST_ID: f"e{pid}-{j}",
                Col.TRACE_ID: "",
                Col.TARGET: "http://127.0.0.1:8000",
                Col.USER: -1,
                Col.SCHEDULED_AT: t,
                Col.SENT_AT: t,
                Col.FIRST_TOKEN_AT: math.nan,
                Col.FINISHED_AT: t + 0.01,
                Col.SCHEDULE_LAG_S: 0.0,
                Col.TTFT_S: math.nan,
                Col.TTFT_FROM_SCHEDULE_S: math.nan,
                Col.E2E_S: 0.01,
                Col.E2E_FROM_SCHEDULE_S: 0.01,
                Col.TPOT_S: math.nan,
                Col.ITL_S: [],
                Col.PROMPT_TOKENS: 64,
                Col.COMPLETION_TOKENS: 0,
                Col.STREAMED_CHUNKS: 0,
                Col.USAGE_MISMATCH: False,
                Col.STATUS: 503,
                Col.OK: False,
                Col.ERROR: "queue full",
                Col.FINISH_REASON: "",
            }
        )
    return rows


def _server_rows(p: SynthPoint, pid: int, n_ok: int) -> list[dict[str, Any]]:
    svc = p.service
    b = p.batch_size
    batches = n_ok / b
    server_ttft = (
        p.server_ttft_mean_s
        if p.server_ttft_mean_s is not None
        else max(p.ttft_p95_s / 1.3 - svc.overhead_s, 1e-4)
    )
    totals: dict[str, float] = {
        names.TOKENBOOTH_BATCH_SIZE + "_sum": n_ok,
        names.TOKENBOOTH_BATCH_SIZE + "_count": batches,
        names.TOKENBOOTH_BATCH_FILL_RATIO + "_sum": batches * b / p.max_batch_size,
        names.TOKENBOOTH_BATCH_FILL_RATIO + "_count": batches,
        names.TOKENBOOTH_BATCH_PREFILL + "_sum": batches * svc.prefill(b),
        names.TOKENBOOTH_BATCH_PREFILL + "_count": batches,
        names.TOKENBOOTH_BATCH_DECODE + "_sum": batches * svc.decode(b),
        names.TOKENBOOTH_BATCH_DECODE + "_count": batches,
        names.TOKENBOOTH_BATCH_FORMATION_DELAY + "_sum": batches * p.formation_mean_s,
        names.TOKENBOOTH_BATCH_FORMATION_DELAY + "_count": batches,
        names.TOKENBOOTH_QUEUE_WAIT + "_sum": n_ok * p.queue_wait_mean_s,
        names.TOKENBOOTH_QUEUE_WAIT + "_count": n_ok,
        names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN + "_sum": n_ok * server_ttft,
        names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN + "_count": n_ok,
        names.TOKENBOOTH_REQUESTS: n_ok,
        names.TOKENBOOTH_GENERATION_TOKENS: n_ok * p.tokens,
    }
    rows: list[dict[str, Any]] = []
    for r in range(p.replicas):
        replica = f"http://127.0.0.1:{8000 + r}"
        for metric, total in totals.items():
            share = total / p.replicas
            rows.append(
                {
                    Srv.POINT_ID: pid,
                    Srv.REPLICA: replica,
                    Srv.METRIC: metric,
                    Srv.LE: "",
                    Srv.LABELS: "model=synthetic",
                    Srv.BEFORE: 100.0,
                    Srv.AFTER: 100.0 + share,
                    Srv.DELTA: share,
                }
            )
        if p.cpu_per_busy_s is not None:
            busy = batches * svc.batch_time(b) / p.replicas
            rows.append(
                {
                    Srv.POINT_ID: pid,
                    Srv.REPLICA: replica,
                    Srv.METRIC: names.PROCESS_CPU_SECONDS,
                    Srv.LE: "",
                    Srv.LABELS: "",
                    Srv.BEFORE: 50.0,
                    Srv.AFTER: 50.0 + p.cpu_per_busy_s * busy,
                    Srv.DELTA: p.cpu_per_busy_s * busy,
                }
            )
        if p.gpu_memory_bytes is not None:
            rows.append(
                {
                    Srv.POINT_ID: pid,
                    Srv.REPLICA: replica,
                    Srv.METRIC: names.TOKENBOOTH_GPU_MEMORY_USED,
                    Srv.LE: "",
                    Srv.LABELS: "gpu=0",
                    Srv.BEFORE: p.gpu_memory_bytes,
                    Srv.AFTER: p.gpu_memory_bytes,
                    Srv.DELTA: 0.0,
                }
            )
    return rows


def spec_text(name: str, *, target_rps: float = 9.0, mode: str = "rate") -> str:
    """A spec in ``loadgen/examples/sweep.toml``'s format."""
    return f"""
[run]
name = "{name}"
duration_s = {DURATION_S}
warmup_s = {WARMUP_S}
max_requests = 100000
seed = 42
lag_threshold_s = 0.05
min_samples = 20

[target]
kind = "local"
engine = "ctranslate2"
balance = "least_outstanding"

[server]
replicas = [1, 2]
max_batch_size = [8]
quantization = ["int8", "float16"]

[load]
mode = "{mode}"
arrival = "constant"

[slo]
ttft_p95_s = {SLO_TTFT_P95_S}
tpot_p95_s = 0.2
e2e_p95_s = 30.0
max_error_rate = 0.05

[report]
target_rps = {target_rps}
"""


def environment(*, gpu: bool = False, cpu_count: int = 16) -> dict[str, Any]:
    """An ``environment.json`` body."""
    devices = [{"index": 0, "name": "Synthetic GPU", "memory_total_bytes": 80e9}] if gpu else []
    return {
        "tokenbooth_version": "0.1.0",
        "started_at": "2024-01-01T00:00:00Z",
        "machine": {
            "hostname": "synth-host",
            "platform": "Linux-x86_64",
            "python": "3.11.7",
            "cpu_model": "Synthetic CPU",
            "cpu_count": cpu_count,
            "memory_bytes": 64e9,
        },
        "gpu": {
            "available": gpu,
            "detail": "synthetic" if gpu else "no NVIDIA driver",
            "devices": devices,
        },
        "packages": {"ctranslate2": "4.5.0", "numpy": "2.0"},
        "git_revision": "abc1234",
        "model_manifest": {"name": "synthetic-model", "quantization": "int8"},
        "spec_path": "synthetic.toml",
    }


def write_run(
    path: Path,
    points: list[SynthPoint],
    *,
    name: str,
    target_rps: float = 9.0,
    env: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a run directory holding ``points`` (ids in list order)."""
    rd = RunDir(path).create()
    mode = points[0].load_mode if points else "rate"
    rd.write_spec(spec_text(name, target_rps=target_rps, mode=mode))
    rd.write_environment(env or environment())
    rng = np.random.default_rng(seed)
    for pid, p in enumerate(points):
        start = T0 + pid * (DURATION_S + WARMUP_S + 5.0)
        rows = _request_rows(p, pid, start, rng)
        rd.write_requests(pid, rows)
        n_ok = round(p.achieved_rps * DURATION_S)
        rd.write_server(pid, _server_rows(p, pid, n_ok))
        n_req = n_ok + p.errors
        ok_ttft = np.array([r[Col.TTFT_S] for r in rows if r[Col.OK]])
        rd.append_point(
            {
                Point.POINT_ID: pid,
                Point.CONFIG_ID: p.config_id,
                Point.REPEAT: 0,
                Point.REPLICAS: p.replicas,
                Point.MAX_BATCH_SIZE: p.max_batch_size,
                Point.MAX_BATCH_DELAY_MS: p.max_batch_delay_ms,
                Point.BATCH_WORKERS: p.batch_workers,
                Point.INTRA_THREADS: p.intra_threads,
                Point.QUANTIZATION: p.quantization,
                Point.BATCH_POLICY: p.batch_policy,
                Point.SPARE_WORKERS: p.spare_workers,
                Point.LOAD_MODE: p.load_mode,
                Point.ARRIVAL: "constant" if p.load_mode == "rate" else "closed",
                Point.LOAD_LEVEL: p.load_level,
                Point.STATUS: "ok",
                Point.STATUS_DETAIL: "",
                Point.STARTED_AT: start,
                Point.DURATION_S: DURATION_S,
                Point.N_REQUESTS: n_req,
                Point.N_OK: n_ok,
                Point.N_ERRORS: p.errors,
                Point.ERROR_RATE: p.errors / n_req if n_req else math.nan,
                Point.OFFERED_RPS: p.load_level if p.load_mode == "rate" else math.nan,
                Point.ACHIEVED_RPS: n_ok / DURATION_S,
                Point.OUTPUT_TOKENS_PER_S: n_ok * p.tokens / DURATION_S,
                # Deliberately rounded, as a Locust-style summary would be: reports must
                # recompute from the raw rows.
                Point.TTFT_P95_S: round(float(np.quantile(ok_ttft, 0.95)), 1),
                Point.LAG_P95_S: p.lag_s,
                Point.VALID: p.valid,
                Point.INVALID_REASON: p.invalid_reason,
                Point.LOADGEN_BOTTLENECK: False,
            }
        )
    return path


# ------------------------------------------------------------------------------ scenarios

KNEE_RATES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
KNEE_TTFT = [0.10, 0.10, 0.11, 0.12, 0.60, 1.50]
KNEE_AT_RPS = 4.0
INT8_X1_CAPACITY_RPS = 5.0 + (1.0 - 0.60) / (1.50 - 0.60)  # 5.444…
LAGGING_RATE = 7.0
X2_RATES = [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
X2_TTFT = [0.10, 0.10, 0.11, 0.12, 0.50, 1.20]
INT8_X2_CAPACITY_RPS = 10.0 + 2.0 * (1.0 - 0.50) / (1.20 - 0.50)  # 11.428…
LINEAR_RATES = [2.0, 4.0, 6.0, 8.0]
FLOAT16_CAPACITY_RPS = 5.0  # TTFT p95 = 0.2 s x rate meets 1 s at 5 req/s
TARGET_RPS = 9.0

# Configuration keys (config_id) of the capacity run, and their display labels.
INT8_X1_KEY = "c1"
INT8_X2_KEY = "c2"
FLOAT16_X1_KEY = "c3"
INT8_X1 = "int8 b8 d5ms w1 t1 ×1"
INT8_X2 = "int8 b8 d5ms w1 t1 ×2"
FLOAT16_X1 = "float16 b8 d5ms w1 t1 ×1"
# Base configurations (what one replica runs), by key and label.
INT8_BASE_ID = "b8-d5-w1-t1-int8"
FLOAT16_BASE_ID = "b8-d5-w1-t1-float16"
INT8_BASE = "int8 b8 d5ms w1 t1"
FLOAT16_BASE = "float16 b8 d5ms w1 t1"


def capacity_points(*, rps_factor: float = 1.0, ttft_factor: float = 1.0) -> list[SynthPoint]:
    """The points of :func:`write_capacity_run`, optionally degraded (for comparisons)."""
    pts: list[SynthPoint] = []
    for rate, ttft in zip(KNEE_RATES, KNEE_TTFT, strict=True):
        pts.append(
            SynthPoint(
                INT8_X1_KEY,
                rate,
                rate * rps_factor,
                ttft * ttft_factor,
                batch_size=1 + rate / 2,
                queue_wait_mean_s=0.002 * rate,
                formation_mean_s=0.001 * rate,
                gpu_memory_bytes=2.0e9,
            )
        )
    # Schedule lag: the generator could not offer 7 req/s. Its good-looking TTFT must not count.
    pts.append(
        SynthPoint(
            INT8_X1_KEY,
            LAGGING_RATE,
            LAGGING_RATE,
            0.2,
            lag_s=0.5,
            valid=False,
            invalid_reason="schedule lag",
            batch_size=4.5,
            gpu_memory_bytes=2.0e9,
        )
    )
    for rate, ttft in zip(X2_RATES, X2_TTFT, strict=True):
        pts.append(
            SynthPoint(
                INT8_X2_KEY,
                rate,
                rate * rps_factor,
                ttft * ttft_factor,
                replicas=2,
                batch_size=1 + rate / 4,
                queue_wait_mean_s=0.001 * rate,
                gpu_memory_bytes=2.0e9,
            )
        )
    for rate in LINEAR_RATES:
        pts.append(
            SynthPoint(
                FLOAT16_X1_KEY,
                rate,
                rate,
                0.2 * rate,
                quantization="float16",
                batch_size=1 + rate / 2,
                errors=1,
                service=replace(SERVICE, p0=0.04, s0=0.018),
                queue_wait_mean_s=0.05 * rate,
                gpu_memory_bytes=3.5e9,
            )
        )
    return pts


def write_capacity_run(
    path: Path, *, name: str = "capacity", rps_factor: float = 1.0, ttft_factor: float = 1.0
) -> Path:
    """The open-loop scenario described in the module docstring."""
    return write_run(
        path,
        capacity_points(rps_factor=rps_factor, ttft_factor=ttft_factor),
        name=name,
        target_rps=TARGET_RPS,
        env=environment(gpu=True),
    )


SCALING_USERS = [1, 2, 4, 8]


def closed_loop_point(
    users_total: int, replicas: int, svc: ServiceParams = SERVICE, *, batch: int = 8
) -> SynthPoint:
    """A closed-loop point that follows the batch queue exactly (users per replica ≤ batch).

    Zero think time, users of one replica synchronised in one batch: each cycle is the client
    overhead, the batcher's delay (unless the batch is full) and one batch of ``users``.
    """
    users = users_total // replicas
    assert users * replicas == users_total and 1 <= users <= batch
    delay = 0.0 if users >= batch else 0.005
    server_ttft = delay + svc.prefill(users)
    cycle = svc.overhead_s + delay + svc.batch_time(users)
    return SynthPoint(
        "s1" if replicas == 1 else f"s{replicas}",
        float(users_total),
        replicas * users / cycle,
        svc.overhead_s + server_ttft,
        load_mode="concurrency",
        replicas=replicas,
        max_batch_size=batch,
        itl_s=svc.step(users),
        tokens=svc.tokens,
        spread=0.0,
        batch_size=float(users),
        server_ttft_mean_s=server_ttft,
        queue_wait_mean_s=delay,
        formation_mean_s=delay,
        service=svc,
    )


def expected_closed_loop_rps(users_total: int, replicas: int) -> float:
    """The known throughput of :func:`closed_loop_point`."""
    return closed_loop_point(users_total, replicas).achieved_rps


def write_scaling_run(path: Path, *, name: str = "scaling") -> Path:
    """Closed-loop, one and two replicas, queue-consistent (GPU host: no CPU contention)."""
    pts = [closed_loop_point(u, 1) for u in SCALING_USERS]
    pts += [closed_loop_point(2 * u, 2) for u in SCALING_USERS]
    return write_run(path, pts, name=name, target_rps=20.0, env=environment(gpu=True))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
