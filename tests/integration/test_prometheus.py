"""A real Prometheus scraping real replicas, evaluating rules.yml and the dashboard's queries.

Three loopback targets in one ``tokenbooth`` job: a healthy replica on the fake engine, a replica
whose model failed to load (labelled as a GPU pod, so the GPU alert applies to it), and a target
whose path is not a metrics endpoint (a scrape that fails). Prometheus is the Debian binary with
exemplar storage on, scraping every second; everything is asserted through its HTTP API.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from litestar import Litestar
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.launch import free_port
from service.settings import ServiceSettings
from telemetry import names
from tests.conftest import LiveServer, fake_settings, missing_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = REPO / "dashboards" / "tokenbooth-service.json"
MODEL = "fake-model"
MAX_BATCH_SIZE = 8
GPU_ONLY = (
    names.TOKENBOOTH_GPU_UTILIZATION,
    names.TOKENBOOTH_GPU_MEMORY_USED,
    names.TOKENBOOTH_GPU_MEMORY_TOTAL,
    names.TOKENBOOTH_GPU_POWER,
    names.TOKENBOOTH_GPU_TEMPERATURE,
)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class Prometheus:
    """The ``prometheus`` binary on a loopback port with a throwaway TSDB."""

    def __init__(self, binary: str, workdir: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        shutil.copy(RULES, workdir / "rules.yml")
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--enable-feature=exemplar-storage",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.base, timeout=10)

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, "prometheus exited; see prometheus.log"
            try:
                return self.client.get("/-/ready").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("prometheus /-/ready", ready, timeout)

    def api(self, path: str, **params: Any) -> Any:
        r = self.client.get(f"/api/v1/{path}", params=params)
        body = r.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", expr
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, f"{expr} returned {result}"
        return float(result[0]["value"][1])

    def instances(self, expr: str) -> set[str]:
        return {r["metric"].get("instance", "") for r in self.query(expr)}

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.log.close()


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        missing_tool("prometheus binary not found: apt-get install prometheus")
    return binary


@pytest.fixture
def failed_replica() -> Iterator[LiveServer]:
    """A replica whose model cannot load: live, never ready, /metrics without model series."""
    settings = ServiceSettings(engine="ctranslate2", model=Path("/nonexistent/model"), warmup=False)
    app = create_app(settings, registry=CollectorRegistry(), tracer_provider=TracerProvider())
    server = LiveServer(app)
    server.thread.start()
    try:

        def failed() -> bool:
            try:
                r = httpx.get(server.base_url + "/health/ready", timeout=2)
            except httpx.HTTPError:
                return False
            return r.status_code == 503 and r.json()["status"] == "failed"

        wait_for("the failed replica to report failed", failed)
        yield server
    finally:
        server.stop()


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = []
    for panel in dashboard["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
    return exprs


def _substitute(expr: str) -> str:
    values = {
        "$__rate_interval": "60s",
        "$model": ".*",
        "$instance": ".*",
        "$revision": ".*",  # the variable's allValue: these replicas have no revision label
        "$ttft_slo": "0.5",
        "$tpot_slo": "0.1",
    }
    for var, value in values.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


def _alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"] if "alert" in r}


def test_prometheus_scrapes_replicas_and_evaluates_rules_and_dashboard(
    prometheus_binary: str,
    live_server: Callable[[Litestar], LiveServer],
    failed_replica: LiveServer,
    tmp_path: Path,
) -> None:
    app = create_app(
        fake_settings(max_batch_size=MAX_BATCH_SIZE),
        registry=CollectorRegistry(),
        tracer_provider=TracerProvider(),
    )
    good = live_server(app)
    good_instance = f"127.0.0.1:{good.port}"
    failed_instance = f"127.0.0.1:{failed_replica.port}"
    # A target whose "metrics" are the liveness JSON: every scrape of it fails.
    broken_instance = f"localhost:{good.port}"
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": "tokenbooth",
                "static_configs": [
                    {"targets": [good_instance]},
                    {"targets": [failed_instance], "labels": {"accelerator": "nvidia-gpu"}},
                    {"targets": [broken_instance], "labels": {"__metrics_path__": "/health/live"}},
                ],
            }
        ],
    }
    prom = Prometheus(prometheus_binary, tmp_path, config)
    try:
        prom.wait_ready()
        wait_for(
            "first scrape of the healthy replica",
            lambda: (
                prom.instances(f'up{{job="tokenbooth", instance="{good_instance}"}} == 1')
                == {good_instance}
            ),
        )

        # Traffic after the first scrape, so every counter has a before and an after sample.
        responses = []
        with httpx.Client(base_url=good.base_url, timeout=30) as client:
            for i in range(6):
                prompt = "tell me stop_after:2" if i % 3 == 0 else f"count to {i}"
                r = client.post(
                    "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 6}
                )
                assert r.status_code == 200, r.text
                responses.append(r.json())
        sent = len(responses)
        by_outcome = Counter(r["choices"][0]["finish_reason"] for r in responses)
        assert set(by_outcome) == {names.OUTCOME_STOP, names.OUTCOME_LENGTH}
        completion_tokens = sum(r["usage"]["completion_tokens"] for r in responses)
        prompt_tokens = sum(r["usage"]["prompt_tokens"] for r in responses)

        good_sel = f'instance="{good_instance}"'
        wait_for(
            f"Prometheus to see {sent} requests",
            lambda: prom.query(f"sum(tokenbooth_requests_total{{{good_sel}}}) == {sent}") != [],
        )
        # Let the recording rules run on the new samples (NaN >= 0 is false: no data yet).
        p95_recorded = f'model:{names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN}:p95_5m{{model="{MODEL}"}}'
        wait_for("recorded TTFT p95", lambda: prom.query(f"{p95_recorded} >= 0") != [])

        # --- scrape health ---
        assert prom.instances('up{job="tokenbooth"} == 1') == {good_instance, failed_instance}
        assert prom.instances('up{job="tokenbooth"} == 0') == {broken_instance}

        # --- raw series equal what was sent ---
        for outcome, count in by_outcome.items():
            expr = f'sum({names.TOKENBOOTH_REQUESTS}{{{good_sel}, outcome="{outcome}"}})'
            assert prom.value(expr) == count
        assert (
            prom.value(f"sum({names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN}_count{{{good_sel}}})")
            == sent
        )
        assert (
            prom.value(f"sum({names.GEN_AI_SERVER_REQUEST_DURATION}_count{{{good_sel}}})") == sent
        )
        assert prom.value(f"sum({names.TOKENBOOTH_GENERATION_TOKENS}{{{good_sel}}})") == (
            completion_tokens
        )
        assert prom.value(f"sum({names.TOKENBOOTH_PROMPT_TOKENS}{{{good_sel}}})") == prompt_tokens
        info = prom.query(f"{names.TOKENBOOTH_MODEL_INFO}{{{good_sel}}}")
        assert [i["metric"][names.LABEL_MODEL] for i in info] == [MODEL]
        assert prom.value(f"{names.TOKENBOOTH_GPU_AVAILABLE}{{{good_sel}}}") == 0

        # --- recording rules ---
        def recorded(name: str, **labels: str) -> float:
            selector = ", ".join(f'{k}="{v}"' for k, v in {"model": MODEL, **labels}.items())
            return prom.value(f"{name}{{{selector}}}")

        ttft = {
            q: recorded(f"model:{names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN}:{q}_5m")
            for q in ("p50", "p95", "p99")
        }
        # The fake engine waits fake_ttft_ms=20 before the first token: no request is faster.
        assert 0.02 <= ttft["p50"] <= ttft["p95"] <= ttft["p99"] <= 1.0, ttft
        assert recorded("model:tokenbooth_generation_tokens:rate5m") > 0
        assert recorded("model:tokenbooth_prompt_tokens:rate5m") > 0
        for outcome in by_outcome:
            assert recorded("model_outcome:tokenbooth_requests:rate5m", outcome=outcome) > 0
        assert recorded("model:tokenbooth_requests_failed:ratio_rate5m") == 0
        assert recorded("model:tokenbooth_requests_rejected:ratio_rate5m") == 0
        fill = recorded("model:tokenbooth_batch_fill_ratio:mean_5m")
        size = recorded("model:tokenbooth_batch_size:mean_5m")
        assert 0 < fill <= 1
        assert math.isclose(fill, size / MAX_BATCH_SIZE, rel_tol=1e-9)

        # Every rule evaluates without error (no many-to-many matches, no bad functions).
        groups = prom.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == sum(
            len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"]
        )
        for rule in rules:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))

        # --- alert expressions pick exactly the broken targets ---
        alerts = _alert_exprs()
        assert prom.instances(alerts["TokenboothTargetDown"]) == {broken_instance}
        assert prom.instances(alerts["TokenboothModelNotLoaded"]) == {failed_instance}
        assert prom.instances(alerts["TokenboothGpuMissing"]) == {failed_instance}
        for quiet in (
            "TokenboothTTFTHigh",
            "TokenboothQueueBackingUp",
            "TokenboothHighErrorRate",
            "TokenboothRequestsRejected",
            "TokenboothTTFTBudgetBurnFast",
            "TokenboothErrorBudgetBurnFast",
            "TokenboothReplicasAbsent",
            "TokenboothQueueSaturated",
            "TokenboothGpuMemoryHigh",
        ):
            assert prom.query(alerts[quiet]) == [], quiet
        # The queue-saturation denominator is exported by the healthy replica (max_queue_size).
        assert prom.instances("instance:tokenbooth_queue_fill:ratio") == {good_instance}

        # --- every dashboard query runs; all but the GPU and failure panels have data ---
        exprs = _dashboard_exprs()
        empty_allowed = re.compile("|".join([*GPU_ONLY, 'error_type!=""']))
        for expr in exprs:
            result = prom.query(_substitute(expr))
            if not empty_allowed.search(expr):
                assert result, f"no data for dashboard query {expr}"
        ttft_slo = next(e for e in exprs if 'le="$ttft_slo"' in e)
        assert prom.value(_substitute(ttft_slo)) == 1.0  # every TTFT was under 0.5 s

        # --- exemplars carry the trace id Grafana links to the trace store ---
        now = time.time()
        exemplars = prom.api(
            "query_exemplars",
            query=f"{names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN}_bucket{{{good_sel}}}",
            start=now - 300,
            end=now + 5,
        )
        trace_ids = {
            e["labels"][names.EXEMPLAR_TRACE_ID]
            for series in exemplars
            for e in series["exemplars"]
        }
        assert trace_ids, "no exemplars stored: was the scrape OpenMetrics?"
        assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in trace_ids)
    finally:
        prom.stop()
