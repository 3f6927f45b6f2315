"""/metrics snapshots, per-point deltas and the server-side summary of a point."""

from __future__ import annotations

import http.server
import math
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from loadgen.results import POINT_COLUMNS, SERVER_COLUMNS, Point, Srv
from loadgen.scrape import deltas, parse, snapshot
from loadgen.servers import KV_CACHE_USAGE, PREEMPTIONS, adapter_for
from loadgen.summary import server_summary
from service.launch import free_port
from telemetry import names
from telemetry.metrics import ServiceMetrics, render_metrics

TTFT = names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN
QUEUE = names.TOKENBOOTH_QUEUE_WAIT
BATCH = names.TOKENBOOTH_BATCH_SIZE
REQS = names.TOKENBOOTH_REQUESTS
GEN = names.TOKENBOOTH_GENERATION_TOKENS
WAITING = names.TOKENBOOTH_REQUESTS_WAITING
L = 'model="m",model_revision="r"'

BEFORE = f"""\
# HELP {TTFT} Time to first token.
# TYPE {TTFT} histogram
{TTFT}_bucket{{{L},le="0.05"}} 1.0
{TTFT}_bucket{{{L},le="0.1"}} 2.0
{TTFT}_bucket{{{L},le="+Inf"}} 2.0
{TTFT}_sum{{{L}}} 0.12
{TTFT}_count{{{L}}} 2.0
{TTFT}_created{{{L}}} 1.7e9
# HELP {QUEUE} Queue wait.
# TYPE {QUEUE} histogram
{QUEUE}_bucket{{{L},le="0.01"}} 2.0
{QUEUE}_bucket{{{L},le="+Inf"}} 2.0
{QUEUE}_sum{{{L}}} 0.004
{QUEUE}_count{{{L}}} 2.0
# HELP {REQS} Requests.
# TYPE {REQS} counter
{REQS}{{{L},outcome="length",error_type=""}} 2.0
# HELP {GEN} Generated tokens.
# TYPE {GEN} counter
{GEN}{{{L}}} 16.0
# HELP {WAITING} Waiting.
# TYPE {WAITING} gauge
{WAITING}{{{L}}} 0.0
# HELP process_cpu_seconds_total CPU.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1.5
"""

AFTER = f"""\
# HELP {TTFT} Time to first token.
# TYPE {TTFT} histogram
{TTFT}_bucket{{{L},le="0.05"}} 3.0
{TTFT}_bucket{{{L},le="0.1"}} 6.0
{TTFT}_bucket{{{L},le="+Inf"}} 7.0
{TTFT}_sum{{{L}}} 0.72
{TTFT}_count{{{L}}} 7.0
{TTFT}_created{{{L}}} 1.7e9
# HELP {QUEUE} Queue wait.
# TYPE {QUEUE} histogram
{QUEUE}_bucket{{{L},le="0.01"}} 6.0
{QUEUE}_bucket{{{L},le="+Inf"}} 7.0
{QUEUE}_sum{{{L}}} 0.054
{QUEUE}_count{{{L}}} 7.0
# HELP {BATCH} Batch size.
# TYPE {BATCH} histogram
{BATCH}_bucket{{{L},le="1.0"}} 1.0
{BATCH}_bucket{{{L},le="2.0"}} 2.0
{BATCH}_bucket{{{L},le="4.0"}} 2.0
{BATCH}_bucket{{{L},le="+Inf"}} 2.0
{BATCH}_sum{{{L}}} 3.0
{BATCH}_count{{{L}}} 2.0
# HELP {REQS} Requests.
# TYPE {REQS} counter
{REQS}{{{L},outcome="length",error_type=""}} 6.0
{REQS}{{{L},outcome="rejected",error_type="queue_full"}} 1.0
# HELP {GEN} Generated tokens.
# TYPE {GEN} counter
{GEN}{{{L}}} 56.0
# HELP {WAITING} Waiting.
# TYPE {WAITING} gauge
{WAITING}{{{L}}} 3.0
# HELP process_cpu_seconds_total CPU.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 2.5
"""

MR = "model=m;model_revision=r"


def by_key(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r[Srv.METRIC], r[Srv.LE], r[Srv.LABELS]): r for r in rows}


def test_parse_flattens_samples_by_name_le_and_labels() -> None:
    snap = parse(BEFORE)
    assert snap[(f"{TTFT}_bucket", "0.1", MR)] == 2.0
    assert snap[(f"{TTFT}_bucket", "+Inf", MR)] == 2.0
    assert snap[(f"{TTFT}_sum", "", MR)] == pytest.approx(0.12)
    assert snap[(REQS, "", f"error_type=;{MR};outcome=length")] == 2.0
    assert snap[(WAITING, "", MR)] == 0.0
    assert snap[("process_cpu_seconds_total", "", "")] == 1.5
    assert parse("") == {}


def test_deltas_of_counters_histograms_and_gauges() -> None:
    rows = deltas(4, "http://a", parse(BEFORE), parse(AFTER))
    assert {r[Srv.POINT_ID] for r in rows} == {4}
    assert {r[Srv.REPLICA] for r in rows} == {"http://a"}
    assert all(set(r) == set(SERVER_COLUMNS) for r in rows)
    rows_by = by_key(rows)
    # Only tokenbooth_/gen_ai_ series and process CPU/memory, never _created samples.
    assert all(
        r[Srv.METRIC].startswith(("tokenbooth_", "gen_ai_", "process_cpu", "process_resident"))
        for r in rows
    )
    assert not any(r[Srv.METRIC].endswith("_created") for r in rows)

    bucket = rows_by[(f"{TTFT}_bucket", "0.1", MR)]
    assert (bucket[Srv.BEFORE], bucket[Srv.AFTER], bucket[Srv.DELTA]) == (2.0, 6.0, 4.0)
    assert rows_by[(f"{TTFT}_sum", "", MR)][Srv.DELTA] == pytest.approx(0.6)
    assert rows_by[(f"{TTFT}_count", "", MR)][Srv.DELTA] == 5.0
    assert rows_by[(REQS, "", f"error_type=;{MR};outcome=length")][Srv.DELTA] == 4.0
    # A series first seen after the point started from zero.
    rejected = rows_by[(REQS, "", f"error_type=queue_full;{MR};outcome=rejected")]
    assert (rejected[Srv.BEFORE], rejected[Srv.DELTA]) == (0.0, 1.0)
    assert rows_by[(f"{BATCH}_count", "", MR)][Srv.DELTA] == 2.0
    # A gauge has no delta: before and after are kept as they were.
    waiting = rows_by[(WAITING, "", MR)]
    assert (waiting[Srv.BEFORE], waiting[Srv.AFTER]) == (0.0, 3.0)
    assert math.isnan(waiting[Srv.DELTA])


def test_a_gauge_absent_before_has_no_before_value() -> None:
    rows = by_key(deltas(0, "http://a", {}, parse(AFTER)))
    assert math.isnan(rows[(WAITING, "", MR)][Srv.BEFORE])
    assert rows[(f"{TTFT}_count", "", MR)][Srv.DELTA] == 7.0


def test_server_summary_means_from_deltas() -> None:
    s = server_summary(deltas(0, "http://a", parse(BEFORE), parse(AFTER)))
    assert s[Point.SERVER_TTFT_MEAN_S] == pytest.approx(0.6 / 5)
    assert s[Point.SERVER_QUEUE_WAIT_MEAN_S] == pytest.approx(0.05 / 5)
    assert s[Point.SERVER_BATCH_SIZE_MEAN] == pytest.approx(1.5)
    assert s[Point.SERVER_REQUESTS] == 5.0  # 4 finished + 1 rejected
    assert s[Point.SERVER_GENERATION_TOKENS] == 40.0
    # Nothing observed in the point: no mean rather than a made-up zero.
    assert Point.SERVER_PREFILL_MEAN_S not in s
    assert Point.SERVER_DECODE_MEAN_S not in s
    assert set(s) <= set(POINT_COLUMNS)


def test_server_summary_pools_replicas_weighted_by_count() -> None:
    # Replica b served 1 request at 0.3 s, replica a 5 at 0.12 s mean: pooled, not averaged.
    other_before = parse(BEFORE)
    other_after = dict(other_before)
    other_after[(f"{TTFT}_sum", "", MR)] = 0.12 + 0.3
    other_after[(f"{TTFT}_count", "", MR)] = 3.0
    rows = deltas(0, "http://a", parse(BEFORE), parse(AFTER)) + deltas(
        0, "http://b", other_before, other_after
    )
    s = server_summary(rows)
    assert s[Point.SERVER_TTFT_MEAN_S] == pytest.approx((0.6 + 0.3) / (5 + 1))
    assert s[Point.SERVER_REQUESTS] == 5.0


def test_summary_of_no_rows_holds_nothing_made_up() -> None:
    assert server_summary([]) == {}


def test_real_service_exposition_round_trips() -> None:
    # The service's own rendering, with names from telemetry.names, feeds the same summary.
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry, model="m", revision="r", max_batch_size=8)
    before = parse(render_metrics(registry, None)[0].decode())
    for ttft in (0.05, 0.07, 0.09):
        metrics.observe_first_token(ttft)
        metrics.observe_queue_wait(0.002)
        metrics.observe_request_end(
            outcome=names.OUTCOME_LENGTH,
            prompt_tokens=10,
            completion_tokens=8,
            duration_s=ttft + 0.07,
            ttft_s=ttft,
        )
    metrics.observe_batch(size=2, formation_delay_s=0.004, prefill_s=0.05, decode_s=0.07)
    metrics.observe_batch(size=1, formation_delay_s=0.002, prefill_s=0.05, decode_s=0.07)
    after = parse(render_metrics(registry, None)[0].decode())
    s = server_summary(deltas(0, "http://a", before, after))
    assert s[Point.SERVER_TTFT_MEAN_S] == pytest.approx(0.07)
    assert s[Point.SERVER_QUEUE_WAIT_MEAN_S] == pytest.approx(0.002)
    assert s[Point.SERVER_BATCH_FORMATION_MEAN_S] == pytest.approx(0.003)
    assert s[Point.SERVER_PREFILL_MEAN_S] == pytest.approx(0.05)
    assert s[Point.SERVER_DECODE_MEAN_S] == pytest.approx(0.07)
    assert s[Point.SERVER_BATCH_SIZE_MEAN] == pytest.approx(1.5)
    assert s[Point.SERVER_BATCH_FILL_MEAN] == pytest.approx(1.5 / 8)
    assert s[Point.SERVER_REQUESTS] == 3.0
    assert s[Point.SERVER_GENERATION_TOKENS] == 24.0


def test_snapshot_of_an_unreachable_replica_is_empty() -> None:
    assert snapshot(f"http://127.0.0.1:{free_port()}", timeout_s=1.0) == {}


def test_rows_name_the_server_sample_each_canonical_one_came_from() -> None:
    vllm = adapter_for("vllm")
    text = (
        "# TYPE vllm:prompt_tokens_total counter\n"
        'vllm:prompt_tokens_total{model_name="m"} 10\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
    )
    after = parse(text.replace(" 10\n", " 30\n").replace(" 0.25\n", " 0.5\n"), vllm)
    rows = by_key(deltas(0, "http://a", parse(text, vllm), after))
    prompt = rows[(names.TOKENBOOTH_PROMPT_TOKENS, "", "model=m")]
    assert (prompt[Srv.SOURCE], prompt[Srv.DELTA]) == ("vllm:prompt_tokens_total", 20.0)
    kv = rows[(KV_CACHE_USAGE, "", "model=m")]
    assert kv[Srv.SOURCE] == "vllm:kv_cache_usage_perc"
    assert (kv[Srv.BEFORE], kv[Srv.AFTER]) == (0.25, 0.5)
    assert math.isnan(kv[Srv.DELTA])
    # tokenbooth's own samples are their own source.
    assert {r[Srv.SOURCE] for r in deltas(0, "u", {}, parse(AFTER))} >= {REQS, WAITING}


def test_a_gauge_maximum_takes_the_larger_of_before_and_after() -> None:
    def rows(before: float, after: float, replica: str) -> list[dict[str, Any]]:
        key = (KV_CACHE_USAGE, "", "")
        return deltas(0, replica, {key: before}, {key: after})

    s = server_summary(rows(0.75, 0.25, "http://a") + rows(0.5, 0.5, "http://b"))
    assert s[Point.SERVER_KV_CACHE_USAGE_MAX] == 0.75
    # A server that exports no such gauge has no such figure, not a zero.
    assert Point.SERVER_KV_CACHE_USAGE_MAX not in server_summary(deltas(0, "u", {}, parse(AFTER)))


def test_e2e_prompt_tokens_and_preemptions_come_from_their_canonical_samples() -> None:
    before = {
        (f"{names.GEN_AI_SERVER_REQUEST_DURATION}_sum", "", ""): 1.0,
        (f"{names.GEN_AI_SERVER_REQUEST_DURATION}_count", "", ""): 2.0,
        (names.TOKENBOOTH_PROMPT_TOKENS, "", ""): 100.0,
        (PREEMPTIONS, "", ""): 1.0,
    }
    after = {
        (f"{names.GEN_AI_SERVER_REQUEST_DURATION}_sum", "", ""): 4.0,
        (f"{names.GEN_AI_SERVER_REQUEST_DURATION}_count", "", ""): 6.0,
        (names.TOKENBOOTH_PROMPT_TOKENS, "", ""): 164.0,
        (PREEMPTIONS, "", ""): 3.0,
    }
    s = server_summary(deltas(0, "http://a", before, after))
    assert s[Point.SERVER_E2E_MEAN_S] == pytest.approx(3.0 / 4)
    assert s[Point.SERVER_PROMPT_TOKENS] == 64.0
    assert s[Point.SERVER_PREEMPTIONS] == 2.0


def test_metrics_that_are_not_prometheus_text_give_an_empty_snapshot() -> None:
    with pytest.raises(ValueError):
        parse("{ not: metrics }\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JsonMetrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        snap = snapshot(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=2.0)
    finally:
        server.shutdown()
        server.server_close()
    assert snap == {}


class _JsonMetrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}\n'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return
