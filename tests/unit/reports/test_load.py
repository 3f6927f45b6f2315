"""The report reads a run's spec exactly as the harness ran it (``reports.load``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.results import Point, RunDir
from loadgen.spec import parse_spec
from reports.analysis import analyze, slo_check
from reports.capacity import Window
from reports.load import load_run
from tests.unit.reports import synth

# Omits [run] warmup_s, duration_s, max_requests and [slo] max_error_rate: each takes the
# harness's default, and the report must judge and model the run with those same defaults.
SPARSE_SPEC = """
[run]
name = "sparse"

[target]
kind = "local"

[load]
mode = "rate"
rate = [1.0]

[slo]
ttft_p95_s = 1.0
"""


@pytest.fixture
def sparse_run(tmp_path: Path) -> Path:
    path = synth.write_run(
        tmp_path / "sparse",
        [synth.SynthPoint("r1-b8-d5-w1-t1-int8", 2.0, 2.0, 0.5)],
        name="sparse",
    )
    RunDir(path).write_spec(SPARSE_SPEC)
    return path


def test_the_report_takes_the_harness_defaults_for_what_the_spec_omits(sparse_run: Path) -> None:
    harness = parse_spec(SPARSE_SPEC)
    run = load_run(sparse_run)
    assert run.spec.run == harness.run
    assert run.spec.slo == harness.slo
    assert run.spec.slo.max_error_rate == harness.slo.max_error_rate is not None
    assert Window.from_spec(run.spec) == Window(
        duration_s=harness.run.duration_s,
        warmup_s=harness.run.warmup_s,
        max_requests=harness.run.max_requests,
        request_timeout_s=harness.run.request_timeout_s,
    )


def test_an_omitted_error_bound_still_fails_a_failing_point(sparse_run: Path) -> None:
    slo = load_run(sparse_run).spec.slo
    row = {Point.TTFT_P95_S: 0.5, Point.TPOT_P95_S: 0.01, Point.E2E_P95_S: 1.0}
    assert slo_check({**row, Point.ERROR_RATE: 0.0}, slo) == ""
    assert slo_check({**row, Point.ERROR_RATE: 0.05}, slo) == "error rate"


def test_the_whole_analysis_judges_error_rate_by_the_harness_default(tmp_path: Path) -> None:
    # 5% of requests fail: over the harness's default 1% bound, under the TTFT bound.
    path = synth.write_run(
        tmp_path / "errors",
        [synth.SynthPoint("r1-b8-d5-w1-t1-int8", 2.0, 2.0, 0.5, errors=3)],
        name="errors",
    )
    RunDir(path).write_spec(SPARSE_SPEC)
    points = analyze(load_run(path), n_resamples=0).points
    assert points[Point.ERROR_RATE].iloc[0] == pytest.approx(3 / 43)
    assert points["slo_fail"].iloc[0] == "error rate"


def test_a_stored_spec_whose_workload_file_is_gone_still_loads(tmp_path: Path) -> None:
    path = synth.write_run(
        tmp_path / "file",
        [synth.SynthPoint("r1-b8-d5-w1-t1-int8", 2.0, 2.0, 0.5)],
        name="file",
    )
    text = SPARSE_SPEC + '\n[workload]\nkind = "file"\npath = "gone.jsonl"\n'
    RunDir(path).write_spec(text)
    assert load_run(path).spec.workload.kind == "file"
