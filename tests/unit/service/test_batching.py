"""Dynamic batching on the fake engine over real HTTP: batch formation, buckets, 429,
disconnect cancellation, timeouts, and the official openai client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from litestar import Litestar
from prometheus_client import CollectorRegistry

from service.app import create_app
from tests.conftest import LiveServer, fake_settings

MODEL = "fake-model"
Start = Callable[[Litestar], LiveServer]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, {"model": MODEL, "model_revision": "fake", **labels})
    return 0.0 if value is None else value


async def _post(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", **body})


def test_concurrent_requests_share_one_batch(
    live_server: Start, registry: CollectorRegistry
) -> None:
    srv = live_server(
        create_app(
            fake_settings(max_batch_size=4, max_batch_delay_ms=200, batch_workers=1),
            registry=registry,
        )
    )

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as c:
            return await asyncio.gather(*[_post(c, max_tokens=3) for _ in range(4)])

    t0 = time.perf_counter()
    responses = asyncio.run(run())
    elapsed = time.perf_counter() - t0
    assert all(r.status_code == 200 for r in responses)
    # Four requests reached max_batch_size before the 200 ms delay: one batch of four, no wait.
    assert sample(registry, "tokenbooth_batch_size_count") == 1
    assert sample(registry, "tokenbooth_batch_size_sum") == 4
    assert elapsed < 0.2 + 0.15
    assert sample(registry, "tokenbooth_batch_fill_ratio_sum") == pytest.approx(1.0)


def test_delay_flushes_partial_batch(live_server: Start, registry: CollectorRegistry) -> None:
    srv = live_server(
        create_app(
            fake_settings(max_batch_size=8, max_batch_delay_ms=80, batch_workers=1),
            registry=registry,
        )
    )
    r = httpx.post(
        srv.base_url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1}
    )
    assert r.status_code == 200
    assert sample(registry, "tokenbooth_batch_size_sum") == 1
    # The lone request waited for the batch delay (80 ms) before its batch formed.
    assert sample(registry, "tokenbooth_batch_formation_delay_seconds_sum") >= 0.075
    assert sample(registry, "tokenbooth_queue_wait_seconds_sum") >= 0.075


def test_incompatible_options_go_in_separate_batches(
    live_server: Start, registry: CollectorRegistry
) -> None:
    srv = live_server(
        create_app(
            fake_settings(max_batch_size=8, max_batch_delay_ms=100, batch_workers=2),
            registry=registry,
        )
    )

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as c:
            return await asyncio.gather(
                _post(c, max_tokens=2, temperature=0),
                _post(c, max_tokens=2, temperature=0),
                _post(c, max_tokens=2, temperature=0.7),
            )

    assert all(r.status_code == 200 for r in asyncio.run(run()))
    assert sample(registry, "tokenbooth_batch_size_count") == 2
    assert sample(registry, "tokenbooth_batch_size_sum") == 3


def test_queue_full_gives_429_with_retry_after(
    live_server: Start, registry: CollectorRegistry
) -> None:
    settings = fake_settings(
        max_batch_size=1, batch_workers=1, max_queue_size=2, fake_itl_ms=50, max_batch_delay_ms=0
    )
    srv = live_server(create_app(settings, registry=registry))

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=20) as c:
            return await asyncio.gather(*[_post(c, max_tokens=4) for _ in range(8)])

    responses = asyncio.run(run())
    codes = sorted(r.status_code for r in responses)
    rejected = [r for r in responses if r.status_code == 429]
    # The queue holds two; a third fits only if the first already left the queue for a batch.
    assert 2 <= codes.count(200) <= 3
    assert rejected, codes
    for r in rejected:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "queue_full"
        assert r.json()["error"]["type"] == "rate_limit_error"
    assert sample(
        registry, "tokenbooth_requests_total", outcome="rejected", error_type="queue_full"
    ) == len(rejected)
    assert codes.count(200) + len(rejected) == 8


def test_disconnect_frees_slot_and_counts_aborted(
    live_server: Start, registry: CollectorRegistry
) -> None:
    settings = fake_settings(max_batch_size=4, batch_workers=1, fake_itl_ms=20)
    srv = live_server(create_app(settings, registry=registry))
    with (
        httpx.Client(base_url=srv.base_url, timeout=10) as c,
        c.stream(
            "POST",
            "/v1/completions",
            json={"model": MODEL, "prompt": "hi", "max_tokens": 500, "stream": True},
        ) as r,
    ):
        got = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                got += 1
            if got >= 3:
                break
    deadline = time.monotonic() + 5
    while (
        time.monotonic() < deadline
        and sample(
            registry,
            "tokenbooth_requests_total",
            outcome="aborted",
            error_type="client_disconnected",
        )
        < 1
    ):
        time.sleep(0.02)
    assert (
        sample(
            registry,
            "tokenbooth_requests_total",
            outcome="aborted",
            error_type="client_disconnected",
        )
        == 1
    )
    assert sample(registry, "tokenbooth_requests_running") == 0
    assert sample(registry, "tokenbooth_requests_waiting") == 0
    # The engine stopped generating for the aborted index long before 500 tokens.
    tokens = sample(registry, "tokenbooth_generation_tokens_total")
    assert 3 <= tokens < 100
    # The freed slot serves the next request at once.
    r2 = httpx.post(
        srv.base_url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
    )
    assert r2.status_code == 200


def test_timeout_non_stream_is_504_and_stream_gets_error_event(
    live_server: Start, registry: CollectorRegistry
) -> None:
    settings = fake_settings(request_timeout_s=0.2, fake_itl_ms=50)
    srv = live_server(create_app(settings, registry=registry))
    r = httpx.post(
        srv.base_url + "/v1/completions",
        json={"model": MODEL, "prompt": "hi", "max_tokens": 100},
        timeout=10,
    )
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "request_timeout"
    r = httpx.post(
        srv.base_url + "/v1/completions",
        json={"model": MODEL, "prompt": "hi", "max_tokens": 100, "stream": True},
        timeout=10,
    )
    assert r.status_code == 200  # headers were sent before the timeout
    events = [e for e in r.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"request_timeout"' in events[-2]
    assert (
        sample(
            registry, "tokenbooth_requests_total", outcome="timeout", error_type="request_timeout"
        )
        == 2
    )


def test_openai_client_streaming_and_not(live_server: Start, registry: CollectorRegistry) -> None:
    srv = live_server(create_app(fake_settings(), registry=registry))
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens == 4
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = []
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) == 5
    assert usage is not None and usage.completion_tokens == 5
    comp = client.completions.create(model=MODEL, prompt="a b", max_tokens=3)
    assert comp.choices[0].finish_reason == "length"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="a", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.completions.create(model=MODEL, prompt="a", max_tokens=10**6)
    assert "max_tokens" in str(excinfo.value)
