"""llama.cpp's llama-server, built from source, as a real OpenAI-compatible peer.

Everything the harness relies on when it measures a third-party server is asserted on the real
thing: streamed chat completions ending in a usage chunk and ``[DONE]``, the model list,
``/health``, ``/tokenize`` and the ``llamacpp:`` metrics on ``/metrics``, and one quirk a client
has to survive: a streamed response ends its connection.
"""

from __future__ import annotations

import http.client
import json
from typing import Any, Final

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer

from service.models.gguf import open_gguf
from service.models.paths import default_gguf_path
from service.models.tokenizer import vocab_from_gguf

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_TOKENS: Final = 16
CHAT: Final[dict[str, Any]] = {
    "messages": [{"role": "user", "content": "Name three colours."}],
    "max_tokens": MAX_TOKENS,
    "temperature": 0,
}
# Digits, punctuation and a leading space: where byte-level BPE pre-tokenizers disagree.
TOKENIZE_TEXT: Final = "Hello world: 1234 tokens, counted twice."
LLAMACPP_METRICS: Final = frozenset(
    {
        "llamacpp:prompt_tokens_total",
        "llamacpp:prompt_tokens_cached_total",
        "llamacpp:prompt_seconds_total",
        "llamacpp:tokens_predicted_total",
        "llamacpp:tokens_predicted_seconds_total",
        "llamacpp:n_decode_total",
        "llamacpp:prompt_tokens_seconds",
        "llamacpp:predicted_tokens_seconds",
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
    }
)


def client(base_url: str) -> httpx.Client:
    # No proxy from the environment: the server is on loopback.
    return httpx.Client(base_url=base_url, timeout=60, trust_env=False)


def served_model(api: httpx.Client) -> str:
    model: str = api.get("/v1/models").raise_for_status().json()["data"][0]["id"]
    return model


def check_usage(usage: dict[str, Any]) -> None:
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= MAX_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_health_answers_ok(llama_server: str) -> None:
    with client(llama_server) as api:
        response = api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_models_lists_the_served_gguf(llama_server: str) -> None:
    with client(llama_server) as api:
        body = api.get("/v1/models").raise_for_status().json()
    assert body["object"] == "list"
    [model] = body["data"]
    assert model["object"] == "model"
    # Without --alias, llama-server names the model by its --model argument, verbatim.
    assert model["id"] == str(default_gguf_path())
    assert model["owned_by"] == "llamacpp"


def test_streamed_chat_completion_ends_with_usage_and_done(llama_server: str) -> None:
    with client(llama_server) as api:
        request = CHAT | {
            "model": served_model(api),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with api.stream("POST", "/v1/chat/completions", json=request) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events), events
    payloads = [line.removeprefix("data: ") for line in events]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    text = "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )
    assert text.strip()
    finish = [
        c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]
    ]
    assert finish in (["stop"], ["length"])
    # The usage arrives once, in a last chunk of its own without choices, as OpenAI sends it.
    with_usage = [chunk for chunk in chunks if chunk.get("usage")]
    assert with_usage == chunks[-1:]
    assert chunks[-1]["choices"] == []
    check_usage(chunks[-1]["usage"])


def test_tokenize_agrees_with_the_harness_tokenizer(llama_server: str) -> None:
    vocab = vocab_from_gguf(open_gguf(default_gguf_path()).metadata)
    expected = Tokenizer.from_str(vocab.tokenizer_json).encode(
        TOKENIZE_TEXT, add_special_tokens=False
    )
    with client(llama_server) as api:
        body = api.post("/tokenize", json={"content": TOKENIZE_TEXT}).raise_for_status().json()
    assert body == {"tokens": expected.ids}


def test_metrics_expose_llamacpp_counters(llama_server: str) -> None:
    with client(llama_server) as api:
        request = CHAT | {"model": served_model(api)}
        usage = api.post("/v1/chat/completions", json=request).raise_for_status().json()["usage"]
        response = api.get("/metrics")
    check_usage(usage)
    assert response.status_code == 200
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert samples.keys() >= LLAMACPP_METRICS
    # Counters are cumulative over the session's server, so at least this request's share.
    assert samples["llamacpp:tokens_predicted_total"] >= usage["completion_tokens"]
    prompt = (
        samples["llamacpp:prompt_tokens_total"] + samples["llamacpp:prompt_tokens_cached_total"]
    )
    assert prompt >= usage["prompt_tokens"]
    assert samples["llamacpp:n_decode_total"] >= 1


def connection_after(llama_server: str, body: dict[str, Any]) -> bytes | None:
    """Send one chat completion on a fresh connection, read it whole, then what follows it.

    Returns:
        ``b""`` when the server closed the connection, None when it stayed open for a second.
    """
    url = httpx.URL(llama_server)
    assert url.port is not None
    connection = http.client.HTTPConnection(url.host, url.port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"}
        connection.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        assert response.getheader("Keep-Alive") is not None
        assert not response.will_close
        assert connection.sock is not None
        connection.sock.settimeout(1.0)
        try:
            return connection.sock.recv(1)
        except TimeoutError:
            return None
    finally:
        connection.close()


def test_a_streamed_response_ends_its_connection(llama_server: str) -> None:
    # llama-server b11434 closes the connection after every streamed response although it
    # answers "Keep-Alive" (its stream callback ends by returning false, which cpp-httplib
    # treats as a cancel), so a client that reuses it can see the next request fail with
    # "Server disconnected". A non-streamed response leaves the connection open.
    with client(llama_server) as api:
        request = CHAT | {"model": served_model(api)}
    assert connection_after(llama_server, request | {"stream": True}) == b""
    assert connection_after(llama_server, request) is None
