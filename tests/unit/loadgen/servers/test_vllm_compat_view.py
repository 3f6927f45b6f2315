"""A tokenbooth replica with ``--metrics-compat vllm`` read through the vLLM adapter.

What a tool that only knows vLLM sees: the ``vllm:`` samples of a live replica (fake engine)
mapped by :data:`loadgen.servers.vllm.VLLM` into the same server view, with the figures the
replica's own names report.
"""

from __future__ import annotations

from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from loadgen import scrape
from loadgen.servers import adapter_for
from service.app import create_app
from telemetry import names
from tests.conftest import fake_settings, wait_ready

REQUESTS = 3


def _total(snap: scrape.Snapshot, name: str) -> float:
    return sum(v for (n, le, _), v in snap.items() if n == name and le == "")


async def _metrics_text(compat: str) -> str:
    settings = fake_settings(metrics_compat=compat, served_model_name="m")
    app = create_app(settings, registry=CollectorRegistry(), tracer_provider=TracerProvider())
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        for _ in range(REQUESTS):
            response = await client.post(
                "/v1/completions", json={"model": "m", "prompt": "Hello", "max_tokens": 4}
            )
            assert response.status_code == 200, response.text
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        return metrics.text


async def test_compat_replica_reads_as_a_vllm_server_view() -> None:
    text = await _metrics_text("vllm")
    vllm = scrape.parse(text, adapter_for("vllm"))
    native = scrape.parse(text, adapter_for("tokenbooth"))
    ttft = f"{names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN}_count"
    e2e = f"{names.GEN_AI_SERVER_REQUEST_DURATION}_count"
    assert _total(vllm, ttft) == REQUESTS
    assert _total(vllm, e2e) == REQUESTS
    assert _total(vllm, names.TOKENBOOTH_GENERATION_TOKENS) == REQUESTS * 4
    for name in (names.TOKENBOOTH_PROMPT_TOKENS, names.TOKENBOOTH_GENERATION_TOKENS, ttft):
        assert _total(vllm, name) == _total(native, name), name
    assert vllm.sources[ttft.removesuffix("_count") + "_bucket"] == (
        names.VLLM_TIME_TO_FIRST_TOKEN + "_bucket"
    )
    assert _total(vllm, names.TOKENBOOTH_REQUESTS_WAITING) == 0
    # model_name is relabelled to model, as for a real vLLM.
    labels = {lb for (n, _, lb) in vllm if n == names.TOKENBOOTH_PROMPT_TOKENS}
    assert labels == {"model=m"}


async def test_without_compat_the_vllm_view_is_empty() -> None:
    text = await _metrics_text("none")
    vllm = scrape.parse(text, adapter_for("vllm"))
    assert _total(vllm, f"{names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN}_count") == 0
    assert "vllm:" not in text
