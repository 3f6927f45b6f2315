"""Each kind's adapter on its recorded ``/metrics``: what identifies it, and the canonical view.

The fixtures (``tests/fixtures/servers/<kind>/``, each with a ``SOURCE.md``) are in each
server's own exposition; the expected values are read off the fixture text by hand, so a rule
that maps the wrong sample, sums two names for one figure or drops a label shows here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from loadgen import scrape
from loadgen.results import POINT_COLUMNS, Point, Srv
from loadgen.servers import (
    ADAPTERS,
    KV_CACHE_USAGE,
    PREEMPTIONS,
    SERVER_KINDS,
    Adapter,
    Ratio,
    Sum,
    adapter_for,
    has_server_view,
)
from loadgen.servers.detect import identify
from loadgen.summary import SERVER_VIEW_COLUMNS, server_summary
from telemetry import names
from tests.support.mock_servers import FIXTURES

TTFT = names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN
TPOT = names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN
E2E = names.GEN_AI_SERVER_REQUEST_DURATION
QUEUE = names.TOKENBOOTH_QUEUE_WAIT
ITL = names.TOKENBOOTH_INTER_TOKEN_LATENCY
PROMPT = names.TOKENBOOTH_PROMPT_TOKENS
GEN = names.TOKENBOOTH_GENERATION_TOKENS
REQUESTS = names.TOKENBOOTH_REQUESTS
RUNNING = names.TOKENBOOTH_REQUESTS_RUNNING
WAITING = names.TOKENBOOTH_REQUESTS_WAITING
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
RECORDED = ("tokenbooth", "vllm", "llamacpp", "tgi", "sglang")  # kinds with a metrics.txt


def fixture(kind: str, name: str) -> Path:
    return FIXTURES / kind / name


def metrics_text(kind: str) -> str:
    return fixture(kind, "metrics.txt").read_text()


def models(kind: str) -> Any:
    return json.loads(fixture(kind, "models.json").read_text())


def view(kind: str) -> scrape.Snapshot:
    return scrape.parse(metrics_text(kind), adapter_for(kind))


def total(snap: scrape.Snapshot, name: str) -> float:
    """A canonical sample summed over its label sets (bucket rows excluded)."""
    return sum(v for (n, le, _), v in snap.items() if n == name and le == "")


def families(snap: scrape.Snapshot) -> set[str]:
    return {n for n, _, _ in snap}


def summary_since_zero(kind: str) -> dict[str, float]:
    """The server view of everything the fixture counted, as if scraped from a fresh server."""
    return server_summary(scrape.deltas(0, "http://a", {}, view(kind)))


# ------------------------------------------------------------------------------ the registry


def test_one_adapter_per_kind_in_kind_order() -> None:
    assert tuple(ADAPTERS) == SERVER_KINDS
    assert all(adapter_for(kind).kind == kind for kind in SERVER_KINDS)
    with pytest.raises(KeyError, match="unknown server kind 'triton'"):
        adapter_for("triton")


def test_every_fixture_names_its_source() -> None:
    for kind in SERVER_KINDS:
        assert fixture(kind, "SOURCE.md").read_text().strip(), kind
        assert fixture(kind, "models.json").exists(), kind


def test_readiness_paths_and_version_sources() -> None:
    assert adapter_for("tokenbooth").ready_paths == ("/health/ready",)
    assert adapter_for("llamacpp").ready_paths == ("/health",)
    assert adapter_for("sglang").ready_paths == ("/ready", "/health")
    assert adapter_for("openai").ready_paths == ("/health/ready", "/health", "/v1/models")
    assert [v.path for v in adapter_for("vllm").versions] == ["/version"]
    assert [v.path for v in adapter_for("tgi").versions] == ["/info"]
    assert [v.key for v in adapter_for("llamacpp").versions] == ["build_info"]
    assert not adapter_for("openai").has_metrics


# ------------------------------------------------------------------------------ detection


@pytest.mark.parametrize("kind", RECORDED)
def test_each_recording_is_recognised_by_its_metric_names(kind: str) -> None:
    found, evidence = identify(scrape.samples(metrics_text(kind)), models(kind), {})
    assert found == kind
    assert evidence == f"/metrics: {adapter_for(kind).metric_prefixes[0]} samples"


@pytest.mark.parametrize(
    ("kind", "owner"),
    [
        ("tokenbooth", "tokenbooth"),
        ("vllm", "vllm"),
        ("llamacpp", "llamacpp"),
        ("sglang", "sglang"),
    ],
)
def test_without_metrics_owned_by_gives_the_kind_away(kind: str, owner: str) -> None:
    assert identify([], models(kind), {}) == (kind, f"/v1/models owned_by={owner}")


def test_tgi_without_metrics_is_known_by_its_header_not_its_owned_by() -> None:
    # TGI's owned_by is the model id: nothing to go on there.
    assert models("tgi")["data"][0]["owned_by"] == MODEL
    assert identify([], models("tgi"), {})[0] == "openai"
    assert identify([], models("tgi"), {"X-Compute-Type": "gpu+optimized"}) == (
        "tgi",
        "header x-compute-type: gpu+optimized",
    )


def test_llamacpp_headers_as_recorded_identify_it() -> None:
    recorded = json.loads(fixture("llamacpp", "headers.json").read_text())
    headers = dict(recorded["metrics"]["headers"])
    assert identify([], None, headers) == ("llamacpp", "header server: llama.cpp")
    # The header's value matters: another server's Server header is no evidence.
    assert identify([], None, {"Server": "uvicorn"})[0] == "openai"


def test_metric_names_outrank_owned_by() -> None:
    # A proxy may rewrite owned_by; the metric names are the server's own.
    body = {"data": [{"id": "m", "owned_by": "vllm"}]}
    assert identify(scrape.samples(metrics_text("sglang")), body, {})[0] == "sglang"


def test_a_server_that_says_nothing_is_the_generic_kind() -> None:
    kind, evidence = identify([], models("openai"), {"Server": "nginx"})
    assert kind == "openai"
    assert "not recognised" in evidence
    assert identify([], None, {}) == (kind, evidence)
    assert identify([], {"data": "not a list"}, {}) == (kind, evidence)


def test_tokenbooth_states_its_version_in_a_metric_label() -> None:
    samples = scrape.samples(metrics_text("tokenbooth"))
    assert adapter_for("tokenbooth").version_from_samples(samples) == "0.1.0"
    assert adapter_for("vllm").version_from_samples(scrape.samples(metrics_text("vllm"))) == ""


# ------------------------------------------------------------------------------ canonical view


def test_tokenbooth_names_are_the_canonical_ones() -> None:
    snap = view("tokenbooth")
    assert snap.sources == {}  # nothing renamed
    assert total(snap, TTFT + "_count") == 12
    assert total(snap, TTFT + "_sum") == pytest.approx(0.28345916099988244)
    assert total(snap, PROMPT) == 756
    assert total(snap, GEN) == 768
    assert total(snap, REQUESTS) == 12
    assert total(snap, ITL + "_count") == 756
    assert names.TOKENBOOTH_BATCH_SIZE + "_count" in families(snap)
    # Process samples kept, the rest of the default collectors dropped, _created never kept.
    assert names.PROCESS_CPU_SECONDS in families(snap)
    assert "process_virtual_memory_bytes" not in families(snap)
    assert "python_info" not in families(snap)
    assert not any(n.endswith("_created") for n in families(snap))


def test_vllm_maps_its_names_and_labels() -> None:
    snap = view("vllm")
    assert total(snap, TTFT + "_count") == 12
    assert total(snap, E2E + "_count") == 12
    assert total(snap, QUEUE + "_count") == 12
    assert total(snap, ITL + "_count") == 12 * 63  # every inter-token gap
    assert total(snap, PROMPT) == 768
    assert total(snap, GEN) == 768
    assert total(snap, REQUESTS) == 12  # stop + length + abort
    assert total(snap, RUNNING) == 3
    assert total(snap, WAITING) == 0
    assert total(snap, KV_CACHE_USAGE) == pytest.approx(0.0247)
    assert total(snap, PREEMPTIONS) == 0
    # model_name -> model, finished_reason -> outcome; engine kept.
    labels = {lb for (n, _, lb) in snap if n == REQUESTS}
    assert f"engine=0;model={MODEL};outcome=length" in labels
    assert snap.sources[PROMPT] == "vllm:prompt_tokens_total"
    assert snap.sources[TTFT + "_bucket"] == "vllm:time_to_first_token_seconds_bucket"
    # Unmapped vllm: samples stay under their own names; HTTP and GC samples are dropped.
    assert "vllm:request_prompt_tokens_sum" in families(snap)
    assert "vllm:kv_cache_usage_perc" not in families(snap)  # consumed by KV_CACHE_USAGE
    assert "vllm:gpu_cache_usage_perc" in families(snap)  # the older name, kept as itself
    assert not any(n.startswith(("http_", "python_gc")) for n in families(snap))
    assert names.PROCESS_RESIDENT_MEMORY in families(snap)


def test_a_renamed_vllm_histogram_is_counted_once() -> None:
    # During the rename vLLM exports both spellings with the same observations.
    text = metrics_text("vllm")
    old, new = "vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds"
    copy = [line.replace(old, new) for line in text.splitlines() if old in line]
    snap = scrape.parse(text + "\n".join(copy) + "\n", adapter_for("vllm"))
    assert total(snap, ITL + "_count") == 12 * 63
    assert snap.sources[ITL + "_count"] == new + "_count"
    assert old + "_count" in families(snap)  # the superseded one, kept under its own name


def test_kv_cache_usage_prefers_the_current_vllm_name() -> None:
    text = metrics_text("vllm").replace(
        'vllm:gpu_cache_usage_perc{engine="0",model_name="' + MODEL + '"} 0.0247',
        'vllm:gpu_cache_usage_perc{engine="0",model_name="' + MODEL + '"} 0.5',
    )
    assert total(scrape.parse(text, adapter_for("vllm")), KV_CACHE_USAGE) == pytest.approx(0.0247)
    older = "\n".join(line for line in text.splitlines() if "vllm:kv_cache_usage_perc" not in line)
    assert total(scrape.parse(older, adapter_for("vllm")), KV_CACHE_USAGE) == pytest.approx(0.5)


def test_llamacpp_recording_maps_tokens_and_slots_only() -> None:
    snap = view("llamacpp")
    # Computed and cached prompt tokens, counted apart by llama.cpp, are the prompts together.
    assert total(snap, PROMPT) == 35 + 33
    assert (
        snap.sources[PROMPT] == "llamacpp:prompt_tokens_total+llamacpp:prompt_tokens_cached_total"
    )
    assert total(snap, GEN) == 32
    assert total(snap, RUNNING) == 0
    assert total(snap, WAITING) == 0
    # No latency histograms, no request counter, no KV gauge in this build: absent, not zero.
    assert families(snap).isdisjoint(
        {TTFT + "_count", E2E + "_count", QUEUE + "_count", REQUESTS, KV_CACHE_USAGE, PREEMPTIONS}
    )
    assert "llamacpp:prompt_seconds_total" in families(snap)
    assert "llamacpp:n_tokens_max_total" in families(snap)  # a max, kept as what it is


def test_tgi_derives_tokens_from_histogram_sums_and_kv_from_two_gauges() -> None:
    snap = view("tgi")
    assert total(snap, E2E + "_count") == 12
    assert total(snap, QUEUE + "_count") == 12
    assert total(snap, TPOT + "_count") == 12
    assert TTFT + "_count" not in families(snap)
    assert total(snap, PROMPT) == 13 * 64  # every validated request, the failed one included
    assert total(snap, GEN) == 12 * 64
    assert total(snap, REQUESTS) == 12  # tgi_request_success, read as a _total counter
    assert total(snap, RUNNING) == 3
    assert total(snap, WAITING) == 0
    assert total(snap, KV_CACHE_USAGE) == pytest.approx(384 / 16000)
    assert snap.sources[KV_CACHE_USAGE] == "tgi_batch_current_max_tokens/tgi_batch_max_total_tokens"
    assert snap.sources[PROMPT] == "tgi_request_input_length_sum"
    assert "tgi_request_input_length_bucket" in families(snap)


def test_sglang_maps_its_names_and_labels() -> None:
    snap = view("sglang")
    assert total(snap, TTFT + "_count") == 12
    assert total(snap, E2E + "_count") == 12
    assert total(snap, QUEUE + "_count") == 12
    assert total(snap, ITL + "_count") == 12 * 63
    assert total(snap, PROMPT) == 768
    assert total(snap, GEN) == 768
    assert total(snap, REQUESTS) == 12
    assert total(snap, RUNNING) == 3
    assert total(snap, WAITING) == 0
    assert total(snap, KV_CACHE_USAGE) == pytest.approx(0.0031)
    assert total(snap, PREEMPTIONS) == 0
    assert {lb for (n, _, lb) in snap if n == PROMPT} == {f"model={MODEL}"}


def test_the_generic_kind_keeps_only_process_samples() -> None:
    snap = scrape.parse(metrics_text("vllm"), adapter_for("openai"))
    assert families(snap) == {names.PROCESS_CPU_SECONDS, names.PROCESS_RESIDENT_MEMORY}
    assert not has_server_view(
        adapter_for("openai").canonical(scrape.samples(metrics_text("vllm")))
    )


@pytest.mark.parametrize("kind", RECORDED)
def test_every_recording_has_a_server_view(kind: str) -> None:
    samples = scrape.samples(metrics_text(kind))
    assert has_server_view(adapter_for(kind).canonical(samples))


# What each kind's recording fills in the points.csv server view, and what it leaves absent.
FILLED = {
    "tokenbooth": {
        Point.SERVER_TTFT_MEAN_S,
        Point.SERVER_E2E_MEAN_S,
        Point.SERVER_QUEUE_WAIT_MEAN_S,
        Point.SERVER_BATCH_FORMATION_MEAN_S,
        Point.SERVER_PREFILL_MEAN_S,
        Point.SERVER_DECODE_MEAN_S,
        Point.SERVER_BATCH_SIZE_MEAN,
        Point.SERVER_BATCH_FILL_MEAN,
        Point.SERVER_REQUESTS,
        Point.SERVER_PROMPT_TOKENS,
        Point.SERVER_GENERATION_TOKENS,
    },
    "vllm": {
        Point.SERVER_TTFT_MEAN_S,
        Point.SERVER_E2E_MEAN_S,
        Point.SERVER_QUEUE_WAIT_MEAN_S,
        Point.SERVER_REQUESTS,
        Point.SERVER_PROMPT_TOKENS,
        Point.SERVER_GENERATION_TOKENS,
        Point.SERVER_KV_CACHE_USAGE_MAX,
        Point.SERVER_PREEMPTIONS,
    },
    "llamacpp": {Point.SERVER_PROMPT_TOKENS, Point.SERVER_GENERATION_TOKENS},
    "tgi": {
        Point.SERVER_E2E_MEAN_S,
        Point.SERVER_QUEUE_WAIT_MEAN_S,
        Point.SERVER_REQUESTS,
        Point.SERVER_PROMPT_TOKENS,
        Point.SERVER_GENERATION_TOKENS,
        Point.SERVER_KV_CACHE_USAGE_MAX,
    },
    "sglang": {
        Point.SERVER_TTFT_MEAN_S,
        Point.SERVER_E2E_MEAN_S,
        Point.SERVER_QUEUE_WAIT_MEAN_S,
        Point.SERVER_REQUESTS,
        Point.SERVER_PROMPT_TOKENS,
        Point.SERVER_GENERATION_TOKENS,
        Point.SERVER_KV_CACHE_USAGE_MAX,
        Point.SERVER_PREEMPTIONS,
    },
}


@pytest.mark.parametrize("kind", RECORDED)
def test_server_view_columns_of_each_kind(kind: str) -> None:
    s = summary_since_zero(kind)
    view_columns = {c for c in s if c in SERVER_VIEW_COLUMNS}
    assert view_columns == FILLED[kind]
    assert set(s) <= set(POINT_COLUMNS) | {"gpu_memory_used_bytes"}


def test_server_view_values_from_a_recording() -> None:
    s = summary_since_zero("vllm")
    ttft_sum = float(
        next(
            line.split()[-1]
            for line in metrics_text("vllm").splitlines()
            if line.startswith("vllm:time_to_first_token_seconds_sum")
        )
    )
    assert s[Point.SERVER_TTFT_MEAN_S] == pytest.approx(ttft_sum / 12)
    assert s[Point.SERVER_PROMPT_TOKENS] == 768
    assert s[Point.SERVER_KV_CACHE_USAGE_MAX] == pytest.approx(0.0247)
    assert s[Point.SERVER_PREEMPTIONS] == 0  # exported and zero: a real zero
    tgi = summary_since_zero("tgi")
    assert tgi[Point.SERVER_KV_CACHE_USAGE_MAX] == pytest.approx(384 / 16000)
    assert Point.SERVER_TTFT_MEAN_S not in tgi  # TGI exports no TTFT: absent, never 0


def test_rows_keep_the_servers_own_sample_names() -> None:
    rows = scrape.deltas(3, "http://a", {}, view("sglang"))
    by_metric = {r[Srv.METRIC]: r[Srv.SOURCE] for r in rows}
    assert by_metric[PROMPT] == "sglang:prompt_tokens_total"
    assert by_metric[KV_CACHE_USAGE] == "sglang:token_usage"
    assert by_metric["sglang:cache_hit_rate"] == "sglang:cache_hit_rate"
    assert by_metric[names.PROCESS_CPU_SECONDS] == names.PROCESS_CPU_SECONDS


def test_a_sum_adds_the_parts_present_per_label_set() -> None:
    adapter = Adapter(kind="openai", sums=(Sum(PROMPT, ("a_total", "b_total")),))
    out = adapter.canonical(
        [("a_total", {"m": "x"}, 3.0), ("b_total", {"m": "x"}, 4.0), ("a_total", {"m": "y"}, 1.0)]
    )
    assert {(s.labels["m"], s.value, s.source) for s in out} == {
        ("x", 7.0, "a_total+b_total"),
        ("y", 1.0, "a_total+b_total"),
    }
    assert adapter.canonical([("c_total", {}, 1.0)]) == []  # no part present: absent


def test_a_ratio_without_a_positive_denominator_is_absent() -> None:
    adapter = Adapter(kind="openai", ratios=(Ratio(KV_CACHE_USAGE, "used", "cap"),))
    assert adapter.canonical([("used", {}, 5.0), ("cap", {}, 0.0)]) == []
    assert adapter.canonical([("used", {}, 5.0)]) == []
    (sample,) = adapter.canonical([("used", {}, 5.0), ("cap", {}, 20.0)])
    assert (sample.name, sample.value) == (KV_CACHE_USAGE, 0.25)
    nan = adapter.canonical([("used", {}, math.nan), ("cap", {}, 20.0)])
    assert nan == []
