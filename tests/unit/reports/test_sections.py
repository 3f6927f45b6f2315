"""What the report's sections say: recommendation, capacity, model, environment."""

from __future__ import annotations

import re

from tests.unit.reports.conftest import CliReport


def test_html_states_the_recommendation_and_capacity(capacity_report: CliReport) -> None:
    html = capacity_report.html.read_text()
    headline = re.search(r'<p id="headline" class="headline">(.*?)</p>', html, re.S)
    assert headline is not None
    # --target-rps 10 (the spec says 9): 11.4 req/s of int8 ×2 leaves 14% headroom.
    assert "Run 2 replicas of int8 b8 d5ms w1 t1 for 10 req/s" in headline.group(1)
    assert "headroom +14%" in headline.group(1)
    assert "Target load: 10 req/s (from --target-rps)" in html
    # The SLO crossings, interpolated, with the binding metric and the neighbours named.
    assert re.search(r"5 req/s \[95% CI 4\.9\d–5\.\d+\] \(TTFT p95 binds between 4 and 6\)", html)
    assert re.search(r"5\.44 req/s \[95% CI [\d.–]+\] \(TTFT p95 binds between 5 and 6\)", html)
    assert re.search(r"11\.4 req/s \[95% CI [\d.–]+\] \(TTFT p95 binds between 10 and 12\)", html)
    assert "4 req/s (64 tok/s) at load 4, TTFT p95 0.12 s" in html  # the knee
    assert "Kneedle" in html and "Linear interpolation" in html
    assert "INVALID: schedule lag p95 500 ms &gt; 50 ms" in html
    assert "0.12 [" in html  # a p95 with its bootstrap interval


def test_model_section_states_assumptions_and_error(capacity_report: CliReport) -> None:
    html = capacity_report.html.read_text()
    assert "Fitted batch service times" in html
    assert "Prediction error on held-out measured points" in html
    assert "cross-replica" in html
    # The mechanisms the model rests on are stated.
    assert "forces the longer prompts" in html  # CTranslate2's static batches
    assert "races the batch" in html  # closed-loop desynchronisation
    assert "demand / cores" in html  # CPU contention
    assert "last request catches next batch" in html  # fitted race probability
    assert "Predictions at the target load (10 req/s, Poisson)" in html


def test_environment_block(capacity_report: CliReport) -> None:
    html = capacity_report.html.read_text()
    assert "synth-host" in html and "Synthetic CPU" in html
    assert "Synthetic GPU" in html
    assert "package: ctranslate2" in html
    assert "synthetic-model" in html  # model manifest
    assert "target_rps = 9.0" in html  # the spec itself
    assert "Machine and versions" in html
