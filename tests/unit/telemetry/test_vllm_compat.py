"""``--metrics-compat vllm``: vLLM's names fed by the native observations, off by default."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from telemetry import names
from telemetry.metrics import ServiceMetrics

MODEL = "SmolLM2-135M-Instruct"
VLLM = {names.VLLM_LABEL_MODEL_NAME: MODEL}


def _metrics(registry: CollectorRegistry, compat: str) -> ServiceMetrics:
    return ServiceMetrics(
        registry,
        model=MODEL,
        revision="r",
        max_batch_size=8,
        max_queue_size=64,
        metrics_compat=compat,  # type: ignore[arg-type]
    )


def _families(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


def test_off_by_default_no_vllm_series() -> None:
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry, model=MODEL, revision="r", max_batch_size=8)
    metrics.bind_queue_state(lambda: 3, lambda: 2, lambda: 1)
    metrics.observe_first_token(0.2)
    metrics.observe_request_end(
        outcome="stop", prompt_tokens=5, completion_tokens=7, duration_s=1.0, ttft_s=0.2
    )
    assert not any(name.startswith("vllm:") for name in _families(registry))


def test_vllm_series_move_with_the_native_ones() -> None:
    registry = CollectorRegistry()
    metrics = _metrics(registry, "vllm")
    waiting, running = [4], [2]
    metrics.bind_queue_state(lambda: waiting[0], lambda: running[0], lambda: 1)
    for ttft, prompt, completion, duration in ((0.2, 5, 7, 0.9), (0.6, 11, 3, 1.7)):
        metrics.observe_first_token(ttft)
        metrics.observe_request_end(
            outcome="stop",
            prompt_tokens=prompt,
            completion_tokens=completion,
            duration_s=duration,
            ttft_s=ttft,
        )
    get = registry.get_sample_value
    native = {names.LABEL_MODEL: MODEL, names.LABEL_MODEL_REVISION: "r"}
    assert get(names.VLLM_NUM_REQUESTS_WAITING, VLLM) == 4
    assert get(names.VLLM_NUM_REQUESTS_RUNNING, VLLM) == 2
    waiting[0], running[0] = 0, 5  # read live at scrape time, like the native gauges
    assert get(names.VLLM_NUM_REQUESTS_WAITING, VLLM) == 0
    assert get(names.VLLM_NUM_REQUESTS_RUNNING, VLLM) == 5
    assert get(names.TOKENBOOTH_REQUESTS_RUNNING, native) == 5
    assert get(names.VLLM_PROMPT_TOKENS, VLLM) == 16
    assert get(names.VLLM_GENERATION_TOKENS, VLLM) == 10
    assert get(names.VLLM_PROMPT_TOKENS, VLLM) == get(names.TOKENBOOTH_PROMPT_TOKENS, native)
    ttft = names.VLLM_TIME_TO_FIRST_TOKEN
    assert get(f"{ttft}_count", VLLM) == 2
    assert get(f"{ttft}_sum", VLLM) == pytest.approx(0.8)
    assert get(f"{ttft}_bucket", {**VLLM, "le": "0.25"}) == 1
    assert get(f"{ttft}_bucket", {**VLLM, "le": "2560.0"}) == 2  # vLLM's last bucket
    e2e = names.VLLM_E2E_REQUEST_LATENCY
    assert get(f"{e2e}_count", VLLM) == 2
    assert get(f"{e2e}_sum", VLLM) == pytest.approx(2.6)
    assert get(f"{e2e}_bucket", {**VLLM, "le": "1.0"}) == 1
    # The native series are unchanged by compat mode.
    assert get(f"{names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN}_count", native) == 2
    assert get(names.TOKENBOOTH_QUEUE_CAPACITY, native) == 64


def test_vllm_families_are_the_six_names_and_only_model_name() -> None:
    registry = CollectorRegistry()
    metrics = _metrics(registry, "vllm")
    metrics.bind_queue_state(lambda: 0, lambda: 0, lambda: 0)
    vllm = {
        f.name: {tuple(sorted(set(s.labels) - {"le"})) for s in f.samples}
        for f in registry.collect()
        if f.name.startswith("vllm:")
    }
    # prometheus_client drops _total from counter family names.
    assert set(vllm) == {
        names.VLLM_NUM_REQUESTS_RUNNING,
        names.VLLM_NUM_REQUESTS_WAITING,
        names.VLLM_TIME_TO_FIRST_TOKEN,
        names.VLLM_E2E_REQUEST_LATENCY,
        names.VLLM_PROMPT_TOKENS.removesuffix("_total"),
        names.VLLM_GENERATION_TOKENS.removesuffix("_total"),
    }
    assert all(labels == {(names.VLLM_LABEL_MODEL_NAME,)} for labels in vllm.values())


def test_queue_capacity_is_exported_only_when_known() -> None:
    registry = CollectorRegistry()
    ServiceMetrics(registry, model=MODEL, revision="r", max_batch_size=8)
    assert (
        registry.get_sample_value(
            names.TOKENBOOTH_QUEUE_CAPACITY,
            {names.LABEL_MODEL: MODEL, names.LABEL_MODEL_REVISION: "r"},
        )
        is None
    )
