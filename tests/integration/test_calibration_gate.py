"""The calibration gate end to end: a sweep against canned nginx measures the harness's ceiling,
caches it, records verdicts, warns, and with ``--strict`` refuses a point that asks too much."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loadgen.canned_server import canned_nginx, nginx_binary
from loadgen.results import Env, Point, RunDir
from tests.conftest import missing_tool

pytestmark = pytest.mark.integration

_SPEC = """
[run]
name = "gate"
duration_s = 1.0
warmup_s = 0.0
max_requests = 20
min_samples = 1
saturation_s = 0
timeslice_s = 0

[target]
kind = "remote"
urls = ["{url}"]
server = "openai"
engine = "fake"
ready_path = "/health"

[load]
mode = "rate"
rate = [5.0, 50000.0]
arrival = "constant"

[workload]
api = "chat"
input_tokens = {{ dist = "fixed", value = 8 }}
output_tokens = {{ dist = "fixed", value = 8 }}
"""


def _sweep(spec: Path, out: Path, home: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "service.cli", "sweep", str(spec), "--output", str(out)]
    env = os.environ | {"HOME": str(home)}  # a fresh ceiling cache
    return subprocess.run(
        [*cmd, "--quiet", *flags], capture_output=True, text=True, env=env, timeout=120
    )


def test_gate_measures_caches_warns_and_refuses(tmp_path: Path) -> None:
    if nginx_binary() is None:
        missing_tool("nginx (apt-get install nginx)")
    with canned_nginx(8) as server:
        spec = tmp_path / "gate.toml"
        spec.write_text(textwrap.dedent(_SPEC.format(url=server.url)))
        warned = _sweep(spec, tmp_path / "warn", tmp_path)
        assert warned.returncode == 0, warned.stderr
        run = RunDir(tmp_path / "warn")
        gate = run.environment()[Env.LOADGEN_CEILING]
        assert gate["ceiling"]["source"] == "measured"
        assert 10 < gate["ceiling_rps"] < 50000
        verdicts = {k.split("|")[1]: v for k, v in gate["points"].items()}
        assert verdicts["rate=5/constant"]["ok"] is True
        assert verdicts["rate=50000/constant"]["ok"] is False
        assert "calibration gate" in (tmp_path / "warn" / "sweep.log").read_text()
        pts = run.points().sort_values(Point.OFFERED_RPS)
        assert int(pts.iloc[0][Point.N_OK]) >= 1  # the canned stream reads as completions
        report = subprocess.run(
            [sys.executable, "-m", "service.cli", "report", str(tmp_path / "warn")],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert report.returncode == 0, report.stderr
        md = (tmp_path / "warn" / "report" / "report.md").read_text()
        assert "calibration gate judged these points" in md and "rate=50000" in md
        refused = _sweep(spec, tmp_path / "strict", tmp_path, "--strict")
        assert refused.returncode == 2
        line = refused.stderr.strip().splitlines()[-1]
        assert "calibration gate (--strict)" in line and "rate=50000" in line
        cache = list((tmp_path / ".cache" / "tokenbooth").glob("loadgen-ceiling-*.json"))
        assert len(cache) == 1 and json.loads(cache[0].read_text())["fixed_s"] > 0
