"""ServiceMetrics and /metrics rendering, asserted on a fresh registry per test."""

from __future__ import annotations

import platform
import re

import pytest
from prometheus_client import CollectorRegistry

from telemetry import names
from telemetry.metrics import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_PROMETHEUS,
    ERROR_TYPE_MAX_DISTINCT,
    ServiceMetrics,
    register_process_collectors,
    render_metrics,
)

MODEL = "qwen2.5-0.5b-instruct"
REVISION = "abc123"
LABELS = {names.LABEL_MODEL: MODEL, names.LABEL_MODEL_REVISION: REVISION}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> ServiceMetrics:
    return ServiceMetrics(registry, model=MODEL, revision=REVISION, max_batch_size=8)


def sample(registry: CollectorRegistry, name: str, **extra: str) -> float | None:
    return registry.get_sample_value(name, {**LABELS, **extra})


def bucket(registry: CollectorRegistry, name: str, le: str) -> float | None:
    return sample(registry, f"{name}_bucket", le=le)


def requests_total(registry: CollectorRegistry, outcome: str, error_type: str = "") -> float | None:
    return sample(registry, names.TOKENBOOTH_REQUESTS, outcome=outcome, error_type=error_type)


# --- names ----------------------------------------------------------------------------------


def test_with_slo_boundaries_inserts_sorts_and_dedupes() -> None:
    assert names.with_slo_boundaries((0.1, 0.5, 1.0), 0.3, 0.5, None, 0.05) == (
        0.05,
        0.1,
        0.3,
        0.5,
        1.0,
    )


def test_with_slo_boundaries_keeps_unsorted_input_sorted_and_inf_last() -> None:
    assert names.with_slo_boundaries((1.0, float("inf"), 0.2), 2.0) == (0.2, 1.0, 2.0, float("inf"))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_with_slo_boundaries_rejects_non_positive_or_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="SLO threshold"):
        names.with_slo_boundaries((0.1,), bad)


def test_semconv_buckets_are_the_recommended_boundaries() -> None:
    assert names.TIME_TO_FIRST_TOKEN_BUCKETS[0] == 0.001
    assert names.TIME_TO_FIRST_TOKEN_BUCKETS[-1] == 10.0
    assert len(names.TIME_TO_FIRST_TOKEN_BUCKETS) == 16
    assert names.TIME_PER_OUTPUT_TOKEN_BUCKETS == (
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    )  # fmt: skip
    assert names.REQUEST_DURATION_BUCKETS == (
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    )  # fmt: skip


def test_metric_names_are_prometheus_legal_and_unit_suffixed() -> None:
    metric_names = [
        value
        for key, value in vars(names).items()
        if key.startswith(("GEN_AI_SERVER_", "TOKENBOOTH_")) and isinstance(value, str)
    ]
    assert len(metric_names) == 29
    for name in metric_names:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
    latency = [n for n in metric_names if "latency" in n or "time" in n or "duration" in n]
    assert latency and all(n.endswith("_seconds") for n in latency)


# --- histograms -------------------------------------------------------------------------------


def test_first_token_counts_sums_and_buckets(
    registry: CollectorRegistry, metrics: ServiceMetrics
) -> None:
    metrics.observe_first_token(0.03)
    metrics.observe_first_token(0.3)
    name = names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN
    assert sample(registry, f"{name}_count") == 2
    assert sample(registry, f"{name}_sum") == pytest.approx(0.33)
    assert bucket(registry, name, "0.02") == 0
    assert bucket(registry, name, "0.04") == 1
    assert bucket(registry, name, "0.25") == 1
    assert bucket(registry, name, "0.5") == 2
    assert bucket(registry, name, "+Inf") == 2


def test_slo_thresholds_become_bucket_boundaries(registry: CollectorRegistry) -> None:
    metrics = ServiceMetrics(
        registry,
        model=MODEL,
        revision=REVISION,
        max_batch_size=8,
        ttft_slo_seconds=0.3,
        tpot_slo_seconds=0.045,
        e2e_slo_seconds=3.0,
    )
    metrics.observe_first_token(0.29)
    metrics.observe_first_token(0.31)
    metrics.observe_token_gap(0.044)
    metrics.observe_request_end(
        outcome=names.OUTCOME_STOP,
        prompt_tokens=1,
        completion_tokens=2,
        duration_s=2.9,
        ttft_s=2.86,
    )
    assert bucket(registry, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, "0.3") == 1
    assert bucket(registry, names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN, "0.045") == 1
    assert bucket(registry, names.TOKENBOOTH_INTER_TOKEN_LATENCY, "0.045") == 1
    assert bucket(registry, names.GEN_AI_SERVER_REQUEST_DURATION, "3.0") == 1
    body, _ = render_metrics(registry, None)
    assert b'le="0.3"' in body
    assert b'le="3.0"' in body


def test_without_slo_there_is_no_extra_boundary(
    registry: CollectorRegistry, metrics: ServiceMetrics
) -> None:
    metrics.observe_first_token(0.29)
    assert bucket(registry, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, "0.3") is None


def test_tpot_is_decode_time_over_output_tokens_minus_one(
    registry: CollectorRegistry, metrics: ServiceMetrics
) -> None:
    metrics.observe_request_end(
        outcome=names.OUTCOME_LENGTH,
        prompt_tokens=10,
        completion_tokens=11,
        duration_s=1.5,
        ttft_s=0.5,
    )
    tpot = names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN
    assert sample(registry, f"{tpot}_count") == 1
    assert sample(registry, f"{tpot}_sum") == pytest.approx(0.1)
    duration = names.GEN_AI_SERVER_REQUEST_DURATION
    assert sample(registry, f"{duration}_count") == 1
    assert sample(registry, f"{duration}_sum") == pytest.approx(1.5)
    assert bucket(registry, duration, "1.28") == 0
    assert bucket(registry, duration, "2.56") == 1


@pytest.mark.parametrize(("completion_tokens", "ttft_s"), [(1, 0.2), (0, None), (5, None)])
def test_tpot_skipped_without_a_decode_interval(
    registry: CollectorRegistry,
    metrics: ServiceMetrics,
    completion_tokens: int,
    ttft_s: float | None,
) -> None:
    metrics.observe_request_end(
        outcome=names.OUTCOME_STOP,
        prompt_tokens=3,
        completion_tokens=completion_tokens,
        duration_s=0.4,
        ttft_s=ttft_s,
    )
    assert sample(registry, f"{names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN}_count") == 0
    assert sample(registry, f"{names.GEN_AI_SERVER_REQUEST_DURATION}_count") == 1


def test_token_gaps_and_queue_wait(registry: CollectorRegistry, metrics: ServiceMetrics) -> None:
    for gap in (0.004, 0.012, 0.012, 0.6):
        metrics.observe_token_gap(gap)
    metrics.observe_queue_wait(0.0002)
    itl = names.TOKENBOOTH_INTER_TOKEN_LATENCY
    assert sample(registry, f"{itl}_count") == 4
    assert sample(registry, f"{itl}_sum") == pytest.approx(0.628)
    assert bucket(registry, itl, "0.005") == 1
    assert bucket(registry, itl, "0.015") == 3
    assert bucket(registry, itl, "0.5") == 3
    assert bucket(registry, itl, "0.75") == 4
    assert bucket(registry, names.TOKENBOOTH_QUEUE_WAIT, "0.0005") == 1


def test_batch_records_size_fill_ratio_and_phase_times(
    registry: CollectorRegistry, metrics: ServiceMetrics
) -> None:
    metrics.observe_batch(size=4, formation_delay_s=0.003, prefill_s=0.08, decode_s=1.2)
    metrics.observe_batch(size=8, formation_delay_s=0.0, prefill_s=0.2, decode_s=2.0)
    size = names.TOKENBOOTH_BATCH_SIZE
    assert sample(registry, f"{size}_sum") == 12
    assert bucket(registry, size, "2.0") == 0
    assert bucket(registry, size, "4.0") == 1
    assert bucket(registry, size, "8.0") == 2
    fill = names.TOKENBOOTH_BATCH_FILL_RATIO
    assert sample(registry, f"{fill}_sum") == pytest.approx(1.5)
    assert bucket(registry, fill, "0.4") == 0
    assert bucket(registry, fill, "0.5") == 1
    assert bucket(registry, fill, "1.0") == 2
    assert sample(registry, f"{names.TOKENBOOTH_BATCH_FORMATION_DELAY}_sum") == pytest.approx(0.003)
    assert sample(registry, f"{names.TOKENBOOTH_BATCH_PREFILL}_sum") == pytest.approx(0.28)
    assert sample(registry, f"{names.TOKENBOOTH_BATCH_DECODE}_count") == 2
    assert sample(registry, f"{names.TOKENBOOTH_BATCH_DECODE}_sum") == pytest.approx(3.2)


def test_batch_rejects_empty(metrics: ServiceMetrics) -> None:
    with pytest.raises(ValueError, match="batch size"):
        metrics.observe_batch(size=0, formation_delay_s=0, prefill_s=0, decode_s=0)


def test_max_batch_size_must_be_positive(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        ServiceMetrics(registry, model=MODEL, revision=REVISION, max_batch_size=0)


# --- counters ---------------------------------------------------------------------------------


def test_request_end_counts_outcome_and_tokens(
    registry: CollectorRegistry, metrics: ServiceMetrics
) -> None:
    metrics.observe_request_end(
        outcome=names.OUTCOME_STOP, prompt_tokens=12, completion_tokens=30, duration_s=1, ttft_s=0.1
    )
    metrics.observe_request_end(
        outcome=names.OUTCOME_STOP, prompt_tokens=8, completion_tokens=2, duration_s=1, ttft_s=0.1
    )
    metrics.observe_request_end(
        outcome=names.OUTCOME_ERROR,
        error_type="engine_error",
        prompt_tokens=5,
        completion_tokens=0,
        duration_s=0.2,
        ttft_s=None,
    )
    assert requests_total(registry, names.OUTCOME_STOP) == 2
    assert requests_total(registry, names.OUTCOME_ERROR, "engine_error") == 1
    assert requests_total(registry, names.OUTCOME_ERROR) == 0
    assert sample(registry, names.TOKENBOOTH_PROMPT_TOKENS) == 25
    assert sample(registry, names.TOKENBOOTH_GENERATION_TOKENS) == 32


def test_every_outcome_starts_at_zero(registry: CollectorRegistry, metrics: ServiceMetrics) -> None:
    for outcome in names.OUTCOMES:
        assert requests_total(registry, outcome) == 0
    assert sample(registry, names.TOKENBOOTH_PROMPT_TOKENS) == 0


def test_rejected_counts_without_tokens_or_duration(
    registry: CollectorRegistry, metrics: ServiceMetrics
) -> None:
    metrics.observe_rejected("queue_full")
    metrics.observe_rejected("queue_full")
    metrics.observe_rejected("draining")
    assert requests_total(registry, names.OUTCOME_REJECTED, "queue_full") == 2
    assert requests_total(registry, names.OUTCOME_REJECTED, "draining") == 1
    assert sample(registry, names.TOKENBOOTH_PROMPT_TOKENS) == 0
    assert sample(registry, f"{names.GEN_AI_SERVER_REQUEST_DURATION}_count") == 0


def test_unknown_outcome_is_refused(metrics: ServiceMetrics) -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        metrics.observe_request_end(
            outcome="cancelled", prompt_tokens=1, completion_tokens=1, duration_s=1, ttft_s=None
        )


def test_negative_tokens_are_refused(metrics: ServiceMetrics) -> None:
    with pytest.raises(ValueError, match="token counts"):
        metrics.observe_request_end(
            outcome="stop", prompt_tokens=-1, completion_tokens=1, duration_s=1, ttft_s=None
        )


def test_error_type_is_sanitised_and_cardinality_capped(
    registry: CollectorRegistry, metrics: ServiceMetrics
) -> None:
    metrics.observe_rejected('bad "type"\n')
    assert requests_total(registry, names.OUTCOME_REJECTED, "bad__type__") == 1
    metrics.observe_rejected("x" * 100)
    assert requests_total(registry, names.OUTCOME_REJECTED, "x" * 64) == 1
    for i in range(ERROR_TYPE_MAX_DISTINCT):
        metrics.observe_rejected(f"reason_{i}")
    # Two slots were used above, so the last two new reasons overflow into "other".
    assert requests_total(registry, names.OUTCOME_REJECTED, f"reason_{ERROR_TYPE_MAX_DISTINCT - 3}")
    assert (
        requests_total(registry, names.OUTCOME_REJECTED, f"reason_{ERROR_TYPE_MAX_DISTINCT - 1}")
        is None
    )
    assert requests_total(registry, names.OUTCOME_REJECTED, names.ERROR_TYPE_OTHER) == 2
    # Already-admitted values keep their own series after the cap.
    metrics.observe_rejected("reason_0")
    assert requests_total(registry, names.OUTCOME_REJECTED, "reason_0") == 2


def test_counters_are_cumulative_across_scrapes(
    registry: CollectorRegistry, metrics: ServiceMetrics
) -> None:
    metrics.observe_rejected("queue_full")
    render_metrics(registry, None)
    render_metrics(registry, "application/openmetrics-text")
    metrics.observe_rejected("queue_full")
    assert requests_total(registry, names.OUTCOME_REJECTED, "queue_full") == 2


# --- gauges and info --------------------------------------------------------------------------


def test_queue_gauges_read_bound_callables_at_scrape_time(
    registry: CollectorRegistry, metrics: ServiceMetrics
) -> None:
    assert sample(registry, names.TOKENBOOTH_REQUESTS_WAITING) is None
    assert sample(registry, names.TOKENBOOTH_BATCHES_RUNNING) is None
    state = {"waiting": 3, "running": 1, "batches": 1}
    metrics.bind_queue_state(
        lambda: state["waiting"], lambda: state["running"], lambda: state["batches"]
    )
    assert sample(registry, names.TOKENBOOTH_REQUESTS_WAITING) == 3
    assert sample(registry, names.TOKENBOOTH_REQUESTS_RUNNING) == 1
    assert sample(registry, names.TOKENBOOTH_BATCHES_RUNNING) == 1
    state["waiting"] = 7
    state["running"] = 4
    state["batches"] = 2
    assert sample(registry, names.TOKENBOOTH_REQUESTS_WAITING) == 7
    assert sample(registry, names.TOKENBOOTH_REQUESTS_RUNNING) == 4
    assert sample(registry, names.TOKENBOOTH_BATCHES_RUNNING) == 2


def test_model_info_joins_on_service_labels(
    registry: CollectorRegistry, metrics: ServiceMetrics
) -> None:
    metrics.set_model_info(quantization="int8", device="cpu", compute_type="int8_float32")
    value = registry.get_sample_value(
        names.TOKENBOOTH_MODEL_INFO,
        {
            **LABELS,
            names.LABEL_QUANTIZATION: "int8",
            names.LABEL_DEVICE: "cpu",
            names.LABEL_COMPUTE_TYPE: "int8_float32",
        },
    )
    assert value == 1


def test_build_info_carries_versions(registry: CollectorRegistry, metrics: ServiceMetrics) -> None:
    families = {m.name: m for m in registry.collect()}
    (info,) = families[names.TOKENBOOTH_BUILD_INFO.removesuffix("_info")].samples
    assert info.name == names.TOKENBOOTH_BUILD_INFO
    assert info.value == 1
    assert info.labels[names.LABEL_PYTHON_VERSION] == platform.python_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info.labels[names.LABEL_CTRANSLATE2_VERSION])
    assert info.labels[names.LABEL_VERSION]


def test_service_series_carry_only_model_labels(
    registry: CollectorRegistry, metrics: ServiceMetrics
) -> None:
    metrics.observe_first_token(0.1)
    metrics.observe_batch(size=1, formation_delay_s=0, prefill_s=0.1, decode_s=0.1)
    allowed = {names.LABEL_MODEL, names.LABEL_MODEL_REVISION, "le"}
    counter_extra = {names.LABEL_OUTCOME, names.LABEL_ERROR_TYPE}
    for family in registry.collect():
        if family.type == "info":
            continue
        for s in family.samples:
            extra = counter_extra if family.name + "_total" == names.TOKENBOOTH_REQUESTS else set()
            assert set(s.labels) <= allowed | extra, (s.name, s.labels)


def test_process_collectors_register_on_the_injected_registry(registry: CollectorRegistry) -> None:
    register_process_collectors(registry)
    assert registry.get_sample_value("python_info", {**_python_info_labels()}) == 1
    body, _ = render_metrics(registry, None)
    assert b"process_cpu_seconds_total" in body
    assert b"process_resident_memory_bytes" in body


def _python_info_labels() -> dict[str, str]:
    major, minor, patch = platform.python_version_tuple()
    return {
        "implementation": platform.python_implementation(),
        "major": major,
        "minor": minor,
        "patchlevel": patch,
        "version": platform.python_version(),
    }


# --- rendering and exemplars ------------------------------------------------------------------


def test_prometheus_text_by_default(registry: CollectorRegistry, metrics: ServiceMetrics) -> None:
    metrics.observe_first_token(0.05, trace_id=TRACE_ID)
    for accept in (None, "", "text/plain;version=0.0.4", "*/*"):
        body, content_type = render_metrics(registry, accept)
        assert content_type == CONTENT_TYPE_PROMETHEUS == "text/plain; version=0.0.4; charset=utf-8"
        assert b"# EOF" not in body
        assert TRACE_ID.encode() not in body
        assert f"# TYPE {names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN} histogram".encode() in body


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text",
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
        "text/plain;q=0.9, Application/OpenMetrics-Text; version=0.0.1; q=0.1",
    ],
)
def test_openmetrics_when_accepted_with_exemplars(
    registry: CollectorRegistry, metrics: ServiceMetrics, accept: str
) -> None:
    metrics.observe_first_token(0.05, trace_id=TRACE_ID)
    body, content_type = render_metrics(registry, accept)
    assert content_type == CONTENT_TYPE_OPENMETRICS
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    text = body.decode()
    ttft = names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN
    line = next(ln for ln in text.splitlines() if ln.startswith(f'{ttft}_bucket{{le="0.06"'))
    assert f'# {{trace_id="{TRACE_ID}"}} 0.05' in line


def test_openmetrics_refused_with_q_zero(registry: CollectorRegistry) -> None:
    _, content_type = render_metrics(registry, "application/openmetrics-text;q=0, text/plain")
    assert content_type == CONTENT_TYPE_PROMETHEUS


def test_exemplars_on_every_latency_histogram(
    registry: CollectorRegistry, metrics: ServiceMetrics
) -> None:
    metrics.observe_queue_wait(0.002, trace_id=TRACE_ID)
    metrics.observe_first_token(0.2, trace_id=TRACE_ID)
    metrics.observe_token_gap(0.02, trace_id=TRACE_ID)
    metrics.observe_request_end(
        outcome="stop",
        prompt_tokens=4,
        completion_tokens=3,
        duration_s=0.6,
        ttft_s=0.2,
        trace_id=TRACE_ID,
    )
    text = render_metrics(registry, "application/openmetrics-text")[0].decode()
    with_exemplar = {
        ln.split("_bucket{")[0] for ln in text.splitlines() if f'trace_id="{TRACE_ID}"' in ln
    }
    assert with_exemplar == {
        names.TOKENBOOTH_QUEUE_WAIT,
        names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
        names.TOKENBOOTH_INTER_TOKEN_LATENCY,
        names.GEN_AI_SERVER_REQUEST_DURATION,
        names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
    }


def test_no_exemplar_without_trace_id(registry: CollectorRegistry, metrics: ServiceMetrics) -> None:
    metrics.observe_first_token(0.05)
    metrics.observe_first_token(0.05, trace_id="")
    text = render_metrics(registry, "application/openmetrics-text")[0].decode()
    assert "trace_id" not in text
