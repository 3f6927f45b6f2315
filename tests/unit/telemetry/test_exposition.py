"""The fast renderer must produce exactly prometheus_client's bytes, in both formats."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample

from telemetry import _exposition
from telemetry.metrics import ServiceMetrics

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def library_openmetrics(registry: CollectorRegistry) -> bytes:
    return bytes(openmetrics.generate_latest(registry))  # type: ignore[no-untyped-call]


class OddFamilies(Collector):
    """Families that exercise timestamps, escaping, gauge histograms and non-legacy names."""

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "odd_timestamped", 'doc with "quotes", \\ and\nnewline', labels=["a"]
        )
        gauge.add_metric(['va"l\\ue\nx'], 1.5, timestamp=1700000000.123)
        gauge.add_metric(["ünïcode"], float("inf"))
        yield gauge
        yield GaugeHistogramMetricFamily(
            "odd_queue_age",
            "gauge histogram",
            buckets=[("1.0", 2.0), ("+Inf", 3.0)],
            gsum_value=4.0,
        )
        yield UnknownMetricFamily("odd_unknown", "unknown type", value=3)
        yield GaugeMetricFamily(
            "odd.dotted_ratio", "non-legacy name takes the library path", value=0.5
        )
        with_exemplar = CounterMetricFamily("odd_exemplar", "counter with exemplar", labels=["k"])
        with_exemplar.add_metric(["v"], 7, created=1600000000.0)
        with_exemplar.samples[0] = with_exemplar.samples[0]._replace(
            exemplar=Exemplar({"trace_id": TRACE_ID}, 0.5, 1700000000.5)
        )
        yield with_exemplar


@pytest.fixture
def busy_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics = ServiceMetrics(
        registry,
        model='model "x"',
        revision="rev\\1",
        max_batch_size=16,
        ttft_slo_seconds=0.3,
        tpot_slo_seconds=0.045,
        e2e_slo_seconds=7.0,
    )
    metrics.set_model_info(quantization="int8", device="cpu", compute_type="int8_float32")
    metrics.bind_queue_state(lambda: 2, lambda: 5, lambda: 1)
    for i in range(50):
        trace_id = f"{i:032x}"
        metrics.observe_queue_wait(0.001 * i, trace_id)
        metrics.observe_first_token(0.01 * i, trace_id)
        metrics.observe_token_gap(0.002 * i, trace_id)
        metrics.observe_request_end(
            outcome="stop",
            prompt_tokens=i,
            completion_tokens=i + 2,
            duration_s=0.05 * i,
            ttft_s=0.01 * i,
            trace_id=trace_id,
        )
        metrics.observe_batch(
            size=1 + i % 16, formation_delay_s=0.001, prefill_s=0.02, decode_s=0.3
        )
    metrics.observe_rejected("queue_full")
    Counter("extra_events_total", "counter", ["kind"], registry=registry).labels("a").inc(
        3, exemplar={"trace_id": TRACE_ID}
    )
    Summary("extra_latency_seconds", "summary", registry=registry).observe(0.2)
    Enum("extra_state", "enum", states=["up", "down"], registry=registry).state("down")
    Info("extra_build", "info", registry=registry).info({"commit": "deadbeef"})
    Gauge("extra_empty", "labelled gauge without children", ["x"], registry=registry)
    Histogram("extra_plain_seconds", "no labels", registry=registry).observe(1.0)
    registry.register(OddFamilies())
    return registry


def test_openmetrics_bytes_match_prometheus_client(busy_registry: CollectorRegistry) -> None:
    ours = _exposition.render_openmetrics(busy_registry)
    assert ours == library_openmetrics(busy_registry)
    assert TRACE_ID.encode() in ours
    assert b"\nodd_dotted_ratio 0.5\n" in ours  # the library's underscore escaping


def test_only_non_legacy_families_take_the_library_path(
    busy_registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    fell_back: list[str] = []
    for name in ("_openmetrics_fallback", "_prometheus_fallback"):
        original = getattr(_exposition, name)

        def spy(metric: Metric, original: Callable[[Metric], str] = original) -> str:
            fell_back.append(metric.name)
            return original(metric)

        monkeypatch.setattr(_exposition, name, spy)
    _exposition.render_openmetrics(busy_registry)
    _exposition.render_prometheus(busy_registry)
    assert fell_back == ["odd.dotted_ratio", "odd.dotted_ratio"]


def test_prometheus_bytes_match_prometheus_client(busy_registry: CollectorRegistry) -> None:
    assert _exposition.render_prometheus(busy_registry) == generate_latest(busy_registry)


def test_repeated_renders_stay_identical(busy_registry: CollectorRegistry) -> None:
    # The second render is served from the label cache.
    first = _exposition.render_openmetrics(busy_registry)
    assert _exposition.render_openmetrics(busy_registry) == first
    assert _exposition.render_prometheus(busy_registry) == generate_latest(busy_registry)


def test_label_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_exposition, "_label_text", {})
    registry = CollectorRegistry()
    gauge = Gauge("many_series", "many label sets", ["i"], registry=registry)
    for i in range(_exposition._LABEL_CACHE_MAX + 100):
        gauge.labels(str(i)).set(i)
    assert _exposition.render_prometheus(registry) == generate_latest(registry)
    assert len(_exposition._label_text) <= _exposition._LABEL_CACHE_MAX


def test_exemplar_where_the_format_forbids_it_is_an_error_in_both() -> None:
    class GaugeWithExemplar(Collector):
        def collect(self) -> Iterator[Metric]:
            family = GaugeMetricFamily("bad_exemplar", "gauge", value=1)
            family.samples[0] = Sample(
                "bad_exemplar", {}, 1.0, None, Exemplar({"trace_id": TRACE_ID}, 1.0)
            )
            yield family

    registry = CollectorRegistry()
    registry.register(GaugeWithExemplar())
    with pytest.raises(ValueError, match="has exemplars"):
        library_openmetrics(registry)
    with pytest.raises(ValueError, match="has exemplars"):
        _exposition.render_openmetrics(registry)
