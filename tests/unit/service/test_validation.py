"""Bad input is refused before admission: a 4xx naming the field, counted as rejected.

Sampling values the engine cannot take (``top_k`` above the vocabulary, a ``top_p`` that is 0 as
float32), bodies nested too deeply to decode, OpenAI parameters we do not implement, and bodies
not declared as JSON never reach the engine, never cause a 500 and never pass as a silent 200.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry

from service import schemas
from service.app import create_app
from service.fake_engine import FAKE_VOCAB
from telemetry import names
from tests.conftest import fake_settings, wait_ready

MODEL = "fake-model"
LABELS = {names.LABEL_MODEL: MODEL, names.LABEL_MODEL_REVISION: "fake"}
FAKE_VOCAB_SIZE = len(FAKE_VOCAB) + 1  # the fake engine's words and its EOS token
ROUTES = ("/v1/completions", "/v1/chat/completions")


@pytest.fixture
async def client(registry: CollectorRegistry) -> Any:
    app = create_app(fake_settings(), registry=registry)
    async with AsyncTestClient(app) as c:
        await wait_ready(c)
        yield c


def body_for(route: str, **fields: Any) -> dict[str, Any]:
    """A valid request body for ``route`` with ``fields`` added."""
    base: dict[str, Any] = {"model": MODEL, "max_tokens": 2}
    if route.endswith("chat/completions"):
        base["messages"] = [{"role": "user", "content": "hi"}]
    else:
        base["prompt"] = "hi"
    return {**base, **fields}


def rejected(registry: CollectorRegistry, error_type: str) -> float:
    value = registry.get_sample_value(
        names.TOKENBOOTH_REQUESTS,
        {**LABELS, names.LABEL_OUTCOME: names.OUTCOME_REJECTED, names.LABEL_ERROR_TYPE: error_type},
    )
    return 0.0 if value is None else value


def assert_error(r: Any, status: int, param: str | None, code: str, message: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["param"], err["code"], err["message"]) == (param, code, message)
    assert err["type"] == "invalid_request_error"


# ------------------------------------------------------------------------ sampling values (3)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("stream", [False, True])
async def test_top_k_above_the_vocabulary_is_a_rejected_400(
    client: Any, registry: CollectorRegistry, route: str, stream: bool
) -> None:
    r = await client.post(
        route, json=body_for(route, top_k=FAKE_VOCAB_SIZE + 1, temperature=0.7, stream=stream)
    )
    message = f"top_k must be <= {FAKE_VOCAB_SIZE}, the model's vocabulary size"
    assert_error(r, 400, "top_k", "invalid_request", message)
    assert rejected(registry, "invalid_request") == 1
    assert registry.get_sample_value(names.GEN_AI_SERVER_REQUEST_DURATION + "_count", LABELS) == 0


@pytest.mark.parametrize("top_k", [FAKE_VOCAB_SIZE, 1, 0, -1])
async def test_top_k_up_to_the_vocabulary_is_served(client: Any, top_k: int) -> None:
    r = await client.post(
        "/v1/completions", json=body_for("/v1/completions", top_k=top_k, temperature=0.7)
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("top_p", [1e-300, 1e-60, 1e-40, 1e-7, 0])
async def test_top_p_below_the_minimum_is_a_rejected_400(
    client: Any, registry: CollectorRegistry, top_p: float
) -> None:
    r = await client.post(
        "/v1/completions", json=body_for("/v1/completions", top_p=top_p, temperature=0.7)
    )
    assert_error(r, 400, "top_p", "invalid_request", "top_p must be >= 1e-06")
    assert rejected(registry, "invalid_request") == 1


@pytest.mark.parametrize("top_p", [schemas.TOP_P_MIN, 0.5, 1.0])
async def test_top_p_from_the_minimum_is_served(client: Any, top_p: float) -> None:
    r = await client.post(
        "/v1/completions", json=body_for("/v1/completions", top_p=top_p, temperature=0.7)
    )
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- deep nesting (5)
def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("field", ["unknown_field", "tools"])
async def test_deeply_nested_body_is_a_400_not_a_500(
    client: Any, registry: CollectorRegistry, route: str, field: str
) -> None:
    body = f'{json.dumps(body_for(route))[:-1]}, "{field}": {nested(1000)}}}'.encode()
    assert len(body) < 2_200
    r = await client.post(route, content=body, headers={"content-type": "application/json"})
    assert_error(r, 400, None, "invalid_json", "request body is nested too deeply to decode")
    assert rejected(registry, "invalid_json") == 1


async def test_moderately_nested_unknown_field_is_ignored(client: Any) -> None:
    r = await client.post(
        "/v1/completions",
        content=b'{"model": "fake-model", "prompt": "hi", "max_tokens": 2, "x": '
        + nested(50).encode()
        + b"}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- unsupported parameters (6)
UNSUPPORTED_VALUES: list[tuple[str, Any]] = [
    ("logprobs", True),
    ("logprobs", 0),  # a completions-style count, not the boolean false
    ("logprobs", 5),
    ("top_logprobs", 2),
    ("best_of", 2),
    ("suffix", " end"),
    ("presence_penalty", 0.5),
    ("frequency_penalty", -1),
    ("logit_bias", {"50256": -100}),
    ("response_format", {"type": "json_object"}),
    ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "required"),
    ("tool_choice", "auto"),
    ("functions", [{"name": "f"}]),
    ("function_call", "auto"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("field", "value"), UNSUPPORTED_VALUES)
async def test_unsupported_parameter_is_a_rejected_400_naming_it(
    client: Any, registry: CollectorRegistry, route: str, field: str, value: Any
) -> None:
    r = await client.post(route, json=body_for(route, **{field: value}))
    assert_error(r, 400, field, "unsupported_parameter", f"unsupported parameter: {field}")
    assert rejected(registry, "unsupported_parameter") == 1


def test_every_unsupported_parameter_is_declared_and_tested() -> None:
    declared = set(schemas.CompletionRequest.__struct_fields__)
    assert set(schemas.UNSUPPORTED_PARAMETERS) <= declared
    assert set(schemas.UNSUPPORTED_PARAMETERS) <= set(
        schemas.ChatCompletionRequest.__struct_fields__
    )
    assert {field for field, _ in UNSUPPORTED_VALUES} == set(schemas.UNSUPPORTED_PARAMETERS)


DEFAULT_VALUES: dict[str, Any] = {
    "logprobs": False,
    "top_logprobs": 0,
    "best_of": 1,
    "suffix": "",
    "presence_penalty": 0,
    "frequency_penalty": 0.0,
    "logit_bias": {},
    "response_format": {"type": "text"},
    "tools": [],
    "tool_choice": "none",
    "functions": [],
    "function_call": "none",
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("field", sorted(DEFAULT_VALUES))
async def test_openai_default_or_null_of_an_unsupported_parameter_is_served(
    client: Any, route: str, field: str
) -> None:
    for value in (DEFAULT_VALUES[field], None):
        r = await client.post(route, json=body_for(route, **{field: value}))
        assert r.status_code == 200, (value, r.text)


@pytest.mark.parametrize("route", ROUTES)
async def test_implemented_and_harmless_fields_are_served(client: Any, route: str) -> None:
    fields = {
        **DEFAULT_VALUES,
        "presence_penalty": 0.0,
        "frequency_penalty": 0,
        "max_completion_tokens": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 5,
        "seed": 7,
        "stop": ["\n\n"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "someone",
        "metadata": {"team": "a"},
        "store": False,
        "service_tier": "auto",
        "parallel_tool_calls": True,
    }
    r = await client.post(route, json=body_for(route, **fields))
    assert r.status_code == 200, r.text
    assert r.text.rstrip().endswith("data: [DONE]")


async def test_openai_client_gets_the_unsupported_parameter_error(client: Any) -> None:
    api = openai.AsyncOpenAI(base_url="http://testserver.local/v1", api_key="-", http_client=client)
    messages: Any = [{"role": "user", "content": "hi"}]
    ok = await api.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=2, logprobs=False, presence_penalty=0
    )
    assert ok.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as excinfo:
        await api.chat.completions.create(model=MODEL, messages=messages, logprobs=True)
    assert excinfo.value.code == "unsupported_parameter"
    assert excinfo.value.param == "logprobs"
    assert "unsupported parameter: logprobs" in str(excinfo.value)


# ------------------------------------------------------------------------ content type (6)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        ("text/plain", "text/plain"),
        ("text/plain;charset=UTF-8", "text/plain"),
        ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),
        ("multipart/form-data; boundary=x", "multipart/form-data"),
        (None, "none"),
    ],
)
async def test_body_not_declared_json_is_a_rejected_415(
    client: Any, registry: CollectorRegistry, route: str, content_type: str | None, shown: str
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    r = await client.post(route, content=json.dumps(body_for(route)).encode(), headers=headers)
    message = f"Content-Type must be application/json, not {shown}"
    assert_error(r, 415, None, "unsupported_media_type", message)
    assert rejected(registry, "unsupported_media_type") == 1


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_content_type_with_parameters_is_served(client: Any, content_type: str) -> None:
    r = await client.post(
        "/v1/completions",
        content=json.dumps(body_for("/v1/completions")).encode(),
        headers={"content-type": content_type},
    )
    assert r.status_code == 200, r.text
