"""OpenAI-compatible API on the fake engine: formats, usage, errors, auth, readiness."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry

import service.app as app_module
from service import schemas
from service.app import create_app
from service.fake_engine import FakeEngine
from tests.conftest import fake_settings, wait_ready

MODEL = "fake-model"


def sse_events(text: str) -> list[str]:
    """Data payloads of an SSE body, in order."""
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


@pytest.fixture
async def client(registry: CollectorRegistry) -> Any:
    app = create_app(fake_settings(), registry=registry)
    async with AsyncTestClient(app) as c:
        await wait_ready(c)
        yield c


async def test_chat_stream_format_and_usage(client: Any) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-request-id"].startswith("req-")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [msgspec.json.decode(e, type=schemas.ChatCompletionChunk) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 6  # one chunk per token
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.completion_tokens == 6
    assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + 6
    assert len({c.id for c in chunks}) == 1


async def test_completion_non_stream_usage_and_finish(client: Any) -> None:
    r = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "one two three", "max_tokens": 3}
    )
    assert r.status_code == 200
    body = msgspec.json.decode(r.content, type=schemas.CompletionResponse)
    assert body.usage.prompt_tokens == 3
    assert body.usage.completion_tokens == 3
    assert body.choices[0].finish_reason == "length"
    # Deterministic fake tokens: prompt of 3 tokens starts at vocab index 3.
    assert body.choices[0].text == " fox jumps over"


async def test_eos_gives_finish_reason_stop(client: Any) -> None:
    r = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "go stop_after:2", "max_tokens": 10}
    )
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 2


async def test_ignore_eos_runs_to_max_tokens(client: Any) -> None:
    r = await client.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "go stop_after:2", "max_tokens": 7, "ignore_eos": True},
    )
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 7


async def test_stop_string_truncates_and_stops(client: Any) -> None:
    # Prompt "x" (1 token): tokens " quick", " brown", " fox", ...
    r = await client.post(
        "/v1/completions",
        json={
            "model": MODEL,
            "prompt": "x",
            "max_tokens": 10,
            "stop": ["n fo", "zzz"],
            "stream": True,
        },
    )
    events = sse_events(r.text)
    text = "".join(
        json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e)["choices"]
    )
    assert text == " quick brow"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"


async def test_models_lists_device_and_revision(client: Any) -> None:
    r = await client.get("/v1/models")
    card = r.json()["data"][0]
    assert card["id"] == MODEL
    assert card["device"] == "cpu"
    assert card["engine"] == "fake"


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (b'{"model": "fake-model", "prompt": ', 400, None, "invalid_json"),
        (b'{"model": "fake-model", "prompt": "\xff\xfe"}', 400, None, "invalid_utf8"),
        (
            b'{"model": "fake-model", "prompt": "hi", "max_tokens": "ten"}',
            422,
            "max_tokens",
            "invalid_body",
        ),
        (b'{"model": "fake-model", "prompt": 5}', 422, "prompt", "invalid_body"),
        (b'{"prompt": "hi"}', 422, None, "invalid_body"),
        (b'{"model": "other", "prompt": "hi"}', 404, "model", "model_not_found"),
        (b'{"model": "fake-model", "prompt": ""}', 400, "prompt", None),
        (
            b'{"model": "fake-model", "prompt": "hi", "max_tokens": 100000}',
            400,
            "max_tokens",
            "max_tokens_too_large",
        ),
        (b'{"model": "fake-model", "prompt": "hi", "max_tokens": 0}', 400, "max_tokens", None),
        (b'{"model": "fake-model", "prompt": "hi", "n": 2}', 400, "n", "unsupported_n"),
        (b'{"model": "fake-model", "prompt": "hi", "temperature": 3}', 400, "temperature", None),
        (b'{"model": "fake-model", "prompt": "hi", "top_p": 0}', 400, "top_p", None),
        (b'{"model": "fake-model", "prompt": ["a", "b"]}', 400, "prompt", None),
        (b"[]", 422, None, "invalid_body"),
        (
            b'{"model": "fake-model", "prompt": "hi", "seed": -1, "temperature": 0.7}',
            400,
            "seed",
            None,
        ),
        (b'{"model": "fake-model", "prompt": "hi", "seed": 4294967296}', 400, "seed", None),
        (b'{"model": "fake-model", "prompt": "hi", "echo": true}', 400, "echo", "unsupported_echo"),
    ],
)
async def test_completion_errors(
    client: Any, body: bytes, status: int, param: str | None, code: str | None
) -> None:
    r = await client.post(
        "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param
        assert param in err["message"] or status in (404,)
    if code is not None:
        assert err["code"] == code


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_tokens", 0, "max_tokens must be >= 1"),
        ("max_completion_tokens", 0, "max_completion_tokens must be >= 1"),
        ("temperature", 2.5, "temperature must be <= 2.0"),
        ("top_p", 0, "top_p must be >= 1e-06"),
        ("top_k", -2, "top_k must be >= -1"),
        ("seed", 2**32, "seed must be <= 4294967295"),
        ("stop", ["a", "b", "c", "d", "e"], "stop must have at most 4 items"),
        ("prompt", "", "prompt must not be empty"),
        ("prompt", ["a", "b"], "prompt must have at most 1 item"),
    ],
)
async def test_out_of_range_values_are_400s_that_say_the_bound(
    client: Any, field: str, value: Any, message: str
) -> None:
    r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", field: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["message"], err["code"]) == (field, message, "invalid_request")
    assert err["type"] == "invalid_request_error"


async def test_unknown_chat_role_names_the_value(client: Any) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]},
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "messages[0].role: unsupported value 'wizard'"


async def test_openapi_documents_the_ranges(client: Any) -> None:
    spec = (await client.get("/docs/openapi.json")).json()
    body = spec["paths"]["/v1/completions"]["post"]["requestBody"]
    props = body["content"]["application/json"]["schema"]["properties"]
    (temperature, _null) = props["temperature"]["anyOf"]
    assert (temperature["minimum"], temperature["maximum"]) == (0, 2)
    assert props["max_tokens"]["anyOf"][0]["minimum"] == 1


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "user", "content": "   "}], "messages"),
        ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
            "messages[0].content",
        ),
    ],
)
async def test_chat_errors(client: Any, messages: list[Any], param: str) -> None:
    r = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


async def test_chat_text_parts_are_accepted(client: Any) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        },
    )
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


async def test_prompt_longer_than_context(registry: CollectorRegistry) -> None:
    app = create_app(
        fake_settings(fake_context_length=32, max_tokens_cap=16, default_max_tokens=8),
        registry=registry,
    )
    async with AsyncTestClient(app) as c:
        await wait_ready(c)
        r = await c.post(
            "/v1/completions", json={"model": MODEL, "prompt": " word" * 30, "max_tokens": 8}
        )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "context_length_exceeded"
        assert "30 tokens" in r.json()["error"]["message"]


async def test_body_over_limit_is_413(registry: CollectorRegistry) -> None:
    app = create_app(fake_settings(max_body_bytes=2048), registry=registry)
    async with AsyncTestClient(app) as c:
        await wait_ready(c)
        big = json.dumps({"model": MODEL, "prompt": "a" * 5000})
        r = await c.post(
            "/v1/completions", content=big, headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "body_too_large"


async def test_unknown_route_is_openai_shaped_404(client: Any) -> None:
    r = await client.get("/v1/nothing")
    assert r.status_code == 404
    assert "error" in r.json()


async def test_api_key(registry: CollectorRegistry) -> None:
    app = create_app(fake_settings(api_key="s3cret"), registry=registry)
    async with AsyncTestClient(app) as c:
        await wait_ready(c)  # health stays open
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
        r = await c.post("/v1/completions", json=body)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        r = await c.post("/v1/completions", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = await c.post("/v1/completions", json=body, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        assert (await c.get("/metrics")).status_code == 200


async def test_api_key_can_protect_ops_endpoints(registry: CollectorRegistry) -> None:
    app = create_app(fake_settings(api_key="k", protect_ops_endpoints=True), registry=registry)
    async with AsyncTestClient(app) as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers={"Authorization": "Bearer k"})).status_code == 200


async def test_readiness_is_503_until_model_loaded(
    monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry
) -> None:
    gate = asyncio.Event()
    loop_holder: list[asyncio.AbstractEventLoop] = []

    def slow_load(settings: Any) -> FakeEngine:
        # Runs in a worker thread: block until the test opens the gate.
        while not gate.is_set():
            time.sleep(0.01)
        return FakeEngine(ttft_s=0.001, itl_s=0.001)

    monkeypatch.setattr(app_module, "load_engine", slow_load)
    app = create_app(fake_settings(), registry=registry)
    async with AsyncTestClient(app) as c:
        loop_holder.append(asyncio.get_running_loop())
        assert (await c.get("/health/live")).status_code == 200
        r = await c.get("/health/ready")
        assert r.status_code == 503
        assert r.json()["status"] == "loading"
        r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "not_ready"
        gate.set()
        await wait_ready(c, limit_s=5)


async def test_failed_load_reports_failed(
    monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry
) -> None:
    from service.errors import ModelBuildError

    def broken(settings: Any) -> FakeEngine:
        raise ModelBuildError("no such model: /nowhere")

    monkeypatch.setattr(app_module, "load_engine", broken)
    app = create_app(fake_settings(), registry=registry)
    async with AsyncTestClient(app) as c:
        for _ in range(100):
            r = await c.get("/health/ready")
            if r.json()["status"] == "failed":
                break
            await asyncio.sleep(0.01)
        assert r.status_code == 503
        assert r.json()["detail"] == "no such model: /nowhere"


async def test_openapi_documents_request_bodies(client: Any) -> None:
    spec = (await client.get("/docs/openapi.json")).json()
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    props = body["content"]["application/json"]["schema"]["properties"]
    assert {"model", "messages", "max_tokens", "stream"} <= set(props)


async def test_chat_template_rejection_is_400(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.errors import ModelBuildError
    from service.fake_engine import FakeCodec

    def reject(self: FakeCodec, messages: list[dict[str, str]]) -> str:
        raise ModelBuildError("chat template error: Conversation roles must alternate")

    monkeypatch.setattr(FakeCodec, "render_chat", reject)
    r = await client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"
    assert "alternate" in r.json()["error"]["message"]


async def test_earliest_stop_string_wins_whatever_its_list_position(client: Any) -> None:
    # Prompt "a" (1 token): the first token is " quick"; "ick" is listed first but "qu" comes
    # first in the text, so nothing after " " may reach the client.
    r = await client.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "a", "max_tokens": 5, "stop": ["ick", "qu"]},
    )
    body = r.json()
    assert body["choices"][0]["text"] == " "
    assert body["choices"][0]["finish_reason"] == "stop"
