"""The README's main job, end to end on the real model: build, sweep local replicas, report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pandas as pd
import pytest

from loadgen.results import POINT_COLUMNS, Col, Point, RunDir
from reports.load import Rpt
from reports.pipeline import MARKDOWN_FILE, SUMMARY_FILE

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

    report = tmp_path / "report"
    stdout = _tokenbooth("report", str(out), "--output", str(report), env=env, timeout=300)
    lines = stdout.strip().splitlines()
    html = Path(lines[-1])
    assert html.exists() and html.suffix == ".html"
    summary = pd.read_csv(report / SUMMARY_FILE)
    assert len(summary) == len(points)
    headline = dict(line.split(": ", 1) for line in lines[:-1])["recommendation"]
    assert headline in unescape(html.read_text())
    assert headline in (report / MARKDOWN_FILE).read_text()
    _assert_recommendation_matches(headline, summary)


# Recommendation.headline(): "Run 1 replica of int8 b4 d5ms w1 t1 for 0.5 req/s: capacity
# 4.12 req/s under the SLO (...), headroom +724% (measured (lower bound))."
HEADLINE = re.compile(
    r"Run (?P<replicas>\d+) replicas? of (?P<config>.+) for (?P<target>[\d.]+) req/s: "
    r"capacity (?P<capacity>[\d.e+]+) req/s under the SLO \(.+\), "
    r"headroom (?P<headroom>[+-]\d+)% \((?P<source>.+)\)\."
)


def _assert_recommendation_matches(headline: str, summary: pd.DataFrame) -> None:
    """The recommendation names the configuration the sweep ran and its measured capacity."""
    match = HEADLINE.fullmatch(headline)
    assert match, headline
    assert float(match["target"]) == 0.5  # the spec's [report] target_rps
    # A 2 s TTFT SLO holds at both levels of a 16-token prompt, so capacity is the rate at the
    # highest level, a lower bound, and one replica (all the sweep ran) carries 0.5 req/s.
    assert summary[Point.VALID].all() and summary[Rpt.SLO_PASS].all()
    top = summary.sort_values(Point.LOAD_LEVEL).iloc[-1]
    assert match["source"] == "measured (lower bound)"
    assert int(match["replicas"]) == top[Point.REPLICAS] == 1
    assert match["config"] == top[Rpt.BASE_CONFIG]
    assert top[Point.MAX_BATCH_SIZE] == 4
    capacity = float(top[Point.ACHIEVED_RPS])
    assert match["capacity"] == f"{capacity:.3g}"
    assert int(match["headroom"]) == round((capacity / 0.5 - 1) * 100)
