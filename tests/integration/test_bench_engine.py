"""``tokenbooth bench engine`` end to end on the real model, at a size that takes seconds.

Checks that both phases ran and that the figures hang together (it does not assert the speed
targets: those are the benchmark's output, not a timed test).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from bench.engine import measure, run_engine_bench
from service.settings import ServiceSettings

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _settings(model_dir: Path) -> ServiceSettings:
    return ServiceSettings(
        model=model_dir, max_batch_size=2, batch_workers=1, intra_threads=1, max_batch_delay_ms=5
    )


def test_measure_runs_both_phases(real_model_dir: Path) -> None:
    r = measure(
        _settings(real_model_dir),
        concurrency=4,
        max_tokens=6,
        prompt_tokens=8,
        rounds=2,
        warmup_rounds=1,
        ttft_samples=3,
        repeats=2,
    )
    assert r.prompt_tokens == 8
    assert r.raw_tokens_per_s > 0 and r.service_tokens_per_s > 0
    assert len(r.ratios) == 2
    assert len(r.raw_phases) == 3 and len(r.service_phases) == 2  # R S R S R
    assert r.throughput_ratio == pytest.approx(statistics.median(r.ratios))
    # Four clients on two slots keep the batches full.
    assert 1.0 < r.service_mean_batch_size <= 2.0
    assert r.service_window_s > 0
    assert r.engine_ttft_ms > 0 and r.service_ttft_ms > 0
    assert r.ttft_delta_ms == pytest.approx(r.service_ttft_ms - r.engine_ttft_ms)
    # The engine's time inside the service is a part of what the client waits for.
    assert 0 < r.in_service_engine_ttft_ms < r.service_ttft_ms * 2
    assert r.ttft_overhead_ms > 0


def test_cli_report_prints_ratio_and_targets(
    real_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = run_engine_bench(
        _settings(real_model_dir),
        concurrency=1,
        max_tokens=4,
        prompt_tokens=8,
        rounds=1,
        warmup_rounds=1,
        ttft_samples=2,
        repeats=1,
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "concurrency 1 < batch slots 2" in out
    assert "raw generate_batch" in out and "service (HTTP, SSE)" in out
    assert "throughput ratio" in out and "target >= 0.90" in out
    assert "TTFT overhead" in out and "target <= 10 ms" in out
