"""The README's main job, end to end on the real model: build, sweep local replicas, report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from loadgen.results import POINT_COLUMNS, Col, Point, RunDir

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SPEC = """
[run]
name = "e2e"
duration_s = 4.0
warmup_s = 1.0
max_requests = 100
min_samples = 3

[target]
kind = "local"
engine = "ctranslate2"

[server]
replicas = [1]
max_batch_size = [4]
max_batch_delay_ms = [5.0]
batch_workers = [1]
intra_threads = [1]

[load]
mode = "concurrency"
concurrency = [1, 2]

[workload]
api = "chat"
input_tokens = { dist = "fixed", value = 16 }
output_tokens = { dist = "fixed", value = 8 }

[slo]
ttft_p95_s = 2.0

[report]
target_rps = 0.5
"""


def _tokenbooth(*args: str, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_sweep_and_report_on_the_real_model(real_model_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "TOKENBOOTH_MODELS_DIR": str(real_model_dir.parent)}
    spec = tmp_path / "e2e.toml"
    spec.write_text(SPEC)
    out = tmp_path / "run"
    stdout = _tokenbooth("sweep", str(spec), "--output", str(out), "--quiet", env=env, timeout=400)
    assert stdout.strip().splitlines()[-1] == str(out)

    run = RunDir(out)
    points = run.points()
    assert list(points.columns) == list(POINT_COLUMNS)
    assert len(points) == 2
    assert (points[Point.STATUS] == "ok").all()
    assert points[Point.VALID].all(), points[Point.INVALID_REASON].tolist()
    requests = run.requests()
    assert requests[Col.OK].all()
    # ignore_eos + fixed output length: every request produced exactly 8 tokens, and the
    # server's usage agrees with the chunks the client saw.
    assert (requests[Col.COMPLETION_TOKENS] == 8).all()
    assert not requests[Col.USAGE_MISMATCH].any()
    server = run.server()
    gen = server[server["metric"] == "tokenbooth_generation_tokens_total"]
    assert gen["delta"].sum() >= 8 * len(requests)
    env_meta = run.environment()
    assert env_meta["model_manifest"]["name"] == "SmolLM2-135M-Instruct"
    assert env_meta["machine"]["cpu_count"] >= 1
    # The server's TTFT (histogram mean over the window) and the client's agree closely.
    for _, p in points.iterrows():
        client_mean = requests[requests[Col.POINT_ID] == p[Point.POINT_ID]][Col.TTFT_S].mean()
        assert abs(client_mean - p[Point.SERVER_TTFT_MEAN_S]) < 0.05, (client_mean, p)

    stdout = _tokenbooth(
        "report", str(out), "--output", str(tmp_path / "report"), env=env, timeout=300
    )
    html = Path(stdout.strip().splitlines()[-1])
    assert html.exists() and html.suffix == ".html"
    text = html.read_text()
    assert "Recommendation" in text or "recommendation" in text
    assert pd.read_csv(next((tmp_path / "report").glob("*.csv"))).shape[0] >= 2
