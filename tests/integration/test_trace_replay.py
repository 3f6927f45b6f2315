"""``tokenbooth sweep`` replaying a Mooncake trace on the fake engine: sends follow the trace.

The sweep runs as a subprocess (the runner imports Locust, whose gevent monkey-patching must
stay out of the test process), bounded in requests and time.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loadgen.results import Col, Point
from loadgen.spec import load_spec
from loadgen.traces import plan_replay, read_trace
from tests.support.sweeps import fake_target_toml, run_sweep, run_toml

pytestmark = pytest.mark.integration

TIME_SCALE = 2.0
WARMUP_S = 0.5
LAG_THRESHOLD_S = 0.05


def write_trace(path: Path, seed: int = 5) -> list[dict[str, int | list[int]]]:
    """40 requests over ~5 s (ms timestamps, distinct), with a burst and shared first blocks."""
    rng = np.random.default_rng(seed)
    gaps = np.concatenate([rng.exponential(150.0, 25), np.full(15, 20.0)])  # then a burst
    times = np.cumsum(np.round(gaps) + 1).astype(int)
    rows: list[dict[str, int | list[int]]] = []
    for i, t in enumerate(times):
        blocks = [100 + i % 3, 1000 + i]  # three shared first blocks, then one of its own
        rows.append(
            {
                "timestamp": int(t),
                "input_length": 512 + int(rng.integers(1, 300)),
                "output_length": int(rng.integers(2, 9)),
                "hash_ids": blocks,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def spec_text(trace: Path) -> str:
    return (
        run_toml(
            name="trace",
            duration_s=10.0,
            warmup_s=WARMUP_S,
            max_requests=200,
            min_samples=5,
            lag_threshold_s=LAG_THRESHOLD_S,
            request_timeout_s=20.0,
        )
        + fake_target_toml(ttft_ms=20, itl_ms=5, max_batch_delay_ms=2)
        + textwrap.dedent(
            f"""
            [load]
            workers = 0

            [workload]
            kind = "trace"
            format = "mooncake"
            path = "{trace}"
            time_scale = {TIME_SCALE}
            api = "chat"
            """
        ).lstrip()
    )


@pytest.mark.slow
def test_trace_point_sends_on_the_traces_timestamps_at_the_time_scale(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    rows = write_trace(trace)
    run = run_sweep(tmp_path, "trace", spec_text(trace), timeout_s=60)
    spec_path = tmp_path / "trace.toml"  # where run_sweep wrote it
    points = run.points()
    assert len(points) == 1
    p = points.iloc[0]
    spec = load_spec(spec_path)
    replay = plan_replay(read_trace(trace, "mooncake"), spec.workload, spec.run)
    assert p[Point.LOAD_MODE] == "rate"
    assert p[Point.ARRIVAL] == "trace"
    assert p[Point.OFFERED_RPS] == pytest.approx(replay.level().value)
    assert bool(p[Point.VALID]), p[Point.INVALID_REASON]

    # Every measured trace request was sent, on the trace's own schedule at the time scale.
    ts = np.array([r["timestamp"] for r in rows], dtype=float) / 1000.0
    offsets = (ts - ts[0]) / TIME_SCALE
    measured = offsets >= WARMUP_S
    req = pd.read_parquet(run.path / "requests" / "0000.parquet").sort_values(Col.SCHEDULED_AT)
    assert len(req) == int(measured.sum()) == p[Point.N_REQUESTS]
    assert req[Col.OK].all(), req[Col.ERROR].tolist()
    sched = req[Col.SCHEDULED_AT].to_numpy()
    np.testing.assert_allclose(
        sched - sched[0], offsets[measured] - offsets[measured][0], atol=1e-6
    )
    lag = req[Col.SENT_AT].to_numpy() - sched
    assert np.percentile(lag, 95) <= LAG_THRESHOLD_S
    assert p[Point.LAG_P95_S] <= LAG_THRESHOLD_S
    # Each send carried its own trace request: output lengths (ignore_eos) and input lengths
    # (the server's count = the trace's, plus the chat template's constant overhead) line up.
    wanted = [r for r, m in zip(rows, measured, strict=True) if m]
    assert req[Col.COMPLETION_TOKENS].tolist() == [r["output_length"] for r in wanted]
    overhead = req[Col.PROMPT_TOKENS].to_numpy() - np.array([r["input_length"] for r in wanted])
    assert overhead.min() == overhead.max() >= 0, overhead
    print(
        f"trace replay: {len(req)} requests at x{TIME_SCALE:g}, offered "
        f"{p[Point.OFFERED_RPS]:.2f} req/s, achieved {p[Point.ACHIEVED_RPS]:.2f} req/s, "
        f"lag p95 {p[Point.LAG_P95_S] * 1000:.1f} ms"
    )
