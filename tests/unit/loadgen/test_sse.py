"""Tolerant stream reading: SSE framing, the chunk shapes of other servers, error bodies.

The samples follow what vLLM, SGLang, llama.cpp and TGI stream for an OpenAI-compatible request
(extra fields, ``null`` content and usage, role-only chunks, reasoning text, tool calls, errors
in their own shapes); the framing tests go through the HTML standard's event-stream rules case
by case; the last tests read tokenbooth's own stream on the fake engine. The same framings over
real HTTP, through the users' send path, are in ``test_users.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry

from loadgen.sse import SSEParser, StreamTally, Usage, error_message
from service.app import create_app
from tests.conftest import fake_settings, wait_ready


def sse(*payloads: dict[str, Any] | str) -> list[bytes]:
    """One ``data:`` event per payload, as a server writes them."""
    return [
        b"data: " + (p if isinstance(p, str) else json.dumps(p)).encode() + b"\n\n"
        for p in payloads
    ]


def tally(events: list[bytes], *, chat: bool = True) -> StreamTally:
    """Feed ``events`` one read each, read ``i`` arriving at time ``i``."""
    t = StreamTally(chat=chat)
    for i, event in enumerate(events):
        t.feed(event, float(i))
    return t


def chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1730000000,
        "model": "m",
        "choices": [choice],
        **extra,
    }


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}

# vLLM with stream_options.include_usage: a role chunk with "" content, `usage: null` on every
# chunk, `stop_reason` beside finish_reason, then a usage chunk with no choices.
VLLM_CHAT = sse(
    chat_chunk({"role": "assistant", "content": ""}, usage=None),
    chat_chunk({"content": "Hello"}, usage=None),
    chat_chunk({"content": " there"}, usage=None),
    {**chat_chunk({"content": "!"}, "length", usage=None), "prompt_token_ids": None},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE},
    "[DONE]",
)

# SGLang: every delta field present (role null, reasoning_content, tool_calls), `matched_stop`
# on the choice; reasoning text streamed before the answer.
SGLANG_REASONING = sse(
    chat_chunk({"role": "assistant", "content": None, "reasoning_content": None}, usage=None),
    chat_chunk(
        {"role": None, "content": None, "reasoning_content": "Think", "tool_calls": None},
        usage=None,
    ),
    chat_chunk({"role": None, "content": "Yes", "reasoning_content": None, "tool_calls": None}),
    {
        **chat_chunk({"role": None, "content": ".", "reasoning_content": None}, "stop"),
        "usage": None,
        "matched_stop": 2,
    },
    {"id": "1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE},
    "[DONE]",
)

# llama.cpp: `content: null` on the role chunk, an empty delta on the final chunk that carries
# usage and llama.cpp's own `timings`.
LLAMACPP_CHAT = sse(
    chat_chunk({"role": "assistant", "content": None}, system_fingerprint="b1"),
    chat_chunk({"content": "a"}),
    chat_chunk({"content": "b"}),
    chat_chunk({"content": "c"}),
    chat_chunk({}, "stop", usage=USAGE, timings={"prompt_n": 7, "predicted_ms": 12.5}),
    "[DONE]",
)

# TGI: the role on every delta, `tool_call_id` beside content, usage only on the last chunk.
TGI_CHAT = sse(
    chat_chunk({"role": "assistant", "content": "x", "tool_call_id": None}, usage=None),
    chat_chunk({"role": "assistant", "content": "y", "tool_call_id": None}, usage=None),
    chat_chunk({"role": "assistant", "content": "z", "tool_call_id": None}, "length", usage=USAGE),
    "[DONE]",
)

# vLLM /v1/completions: `text` choices with logprobs and stop_reason.
VLLM_COMPLETIONS = sse(
    *(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                }
            ],
            "usage": None,
        }
        for text, finish in [(" Par", None), ("is", None), (".", "length")]
    ),
    {"id": "cmpl-1", "object": "text_completion", "choices": [], "usage": USAGE},
    "[DONE]",
)


@pytest.mark.parametrize(
    ("events", "chat"),
    [
        (VLLM_CHAT, True),
        (SGLANG_REASONING, True),
        (LLAMACPP_CHAT, True),
        (TGI_CHAT, True),
        (VLLM_COMPLETIONS, False),
    ],
    ids=["vllm-chat", "sglang-reasoning", "llamacpp-chat", "tgi-chat", "vllm-completions"],
)
def test_other_servers_streams_read_as_three_tokens_with_usage(
    events: list[bytes], chat: bool
) -> None:
    t = tally(events, chat=chat)
    assert t.error == ""
    assert len(t.token_times) == 3  # role-only, empty and null-content chunks are no tokens
    assert t.usage == Usage(prompt_tokens=7, completion_tokens=3)
    assert t.finish_reason in {"length", "stop"}


def test_token_times_are_the_reads_that_carried_text() -> None:
    assert tally(VLLM_CHAT).token_times == [1.0, 2.0, 3.0]
    assert tally(LLAMACPP_CHAT).token_times == [1.0, 2.0, 3.0]
    assert tally(SGLANG_REASONING).finish_reason == "stop"


def test_reasoning_text_counts_as_generated_text() -> None:
    assert tally(sse({"choices": None})).token_times == []
    # Newer vLLM names the field `reasoning`; SGLang and llama.cpp `reasoning_content`.
    events = sse(
        chat_chunk({"reasoning": "a"}),
        chat_chunk({"reasoning_content": "b", "content": None}),
        chat_chunk({"content": "c"}, "stop", usage=USAGE),
    )
    assert tally(events).token_times == [0.0, 1.0, 2.0]


def test_running_usage_keeps_the_last_count() -> None:
    # vLLM's continuous_usage_stats reports the running total on every chunk.
    events = sse(
        chat_chunk({"content": "a"}, usage={"prompt_tokens": 7, "completion_tokens": 1}),
        chat_chunk({"content": "b"}, "stop", usage={"prompt_tokens": 7, "completion_tokens": 2}),
        {"choices": [], "usage": {}},
    )
    t = tally(events)
    assert t.usage == Usage(prompt_tokens=7, completion_tokens=2)


def test_no_usage_anywhere_leaves_usage_unset() -> None:
    events = sse(chat_chunk({"content": "a"}), chat_chunk({"content": "b"}, "stop"), "[DONE]")
    t = tally(events)
    assert t.usage is None
    assert len(t.token_times) == 2


@pytest.mark.parametrize(
    ("events", "message"),
    [
        # OpenAI / tokenbooth / vLLM: an error object, extra fields (code as a number) ignored.
        (
            sse({"error": {"message": "context full", "type": "BadRequestError", "code": 400}}),
            "context full",
        ),
        # TGI: the error as a string beside `error_type`, written `data:` without the space.
        (
            [b'data:{"error":"Input validation error","error_type":"validation"}\n\n'],
            "Input validation error",
        ),
        # llama.cpp: an `error:` field instead of a data event.
        ([b'error: {"code":500,"message":"slot failed","type":"server_error"}\n\n'], "slot failed"),
        # A named error event with a body this cannot read keeps the raw text.
        ([b"event: error\ndata: upstream reset\n\n"], "upstream reset"),
    ],
    ids=["openai", "tgi", "llamacpp", "raw"],
)
def test_errors_in_the_stream_are_reported(events: list[bytes], message: str) -> None:
    t = tally([*sse(chat_chunk({"content": "a"})), *events])
    assert t.error == message
    assert t.token_times == [0.0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"error":{"message":"bad model","type":"invalid_request_error","param":null,'
            b'"code":null}}',
            "bad model",
        ),
        (
            b'{"object":"error","message":"too long","type":"BadRequestError","code":400}',
            "too long",
        ),
        (b'{"error":"Input validation error","error_type":"validation"}', "Input validation error"),
        (b'{"detail":[{"loc":["body","model"],"msg":"field required"}]}', None),
        (b'{"error":{"message":["not","a","string"]}}', None),
        (b"<html>502 Bad Gateway</html>", None),
    ],
    ids=["openai", "vllm-bare", "tgi", "fastapi-422", "odd-message", "not-json"],
)
def test_error_message_of_http_bodies(body: bytes, message: str | None) -> None:
    assert error_message(body) == message


def test_parser_reassembles_events_split_anywhere() -> None:
    stream = (
        b": keep-alive\r\n\r\n"
        b'id: 1\r\nretry: 100\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
        b"event: error\r\ndata: x\r\n\r\n"
        b"data:[DONE]\r\n\r\n"
        b"data: unterminated"
    )
    expected = [(b"message", b'{"a":\n1}'), (b"error", b"x"), (b"message", b"[DONE]")]
    whole = SSEParser().feed(stream)
    assert whole == expected
    for size in (1, 2, 3, 7):
        parser = SSEParser()
        events = []
        for i in range(0, len(stream), size):
            events += parser.feed(stream[i : i + size])
        assert events == expected, size


def test_parser_takes_cr_only_line_ends() -> None:
    parser = SSEParser()
    # A CR ending a read ends its line at once: the event is out with the read that brought it.
    assert parser.feed(b"data: a\r\rdata: b\r\r") == [(b"message", b"a"), (b"message", b"b")]
    assert parser.feed(b"data: c\r\r") == [(b"message", b"c")]


# ------------------------------------------------------------------ framing, case by case
# The rules of the HTML Living Standard, "9.2.6 Interpreting an event stream".


def feed_all(reads: list[bytes]) -> list[tuple[bytes, bytes]]:
    parser = SSEParser()
    events: list[tuple[bytes, bytes]] = []
    for read in reads:
        events += parser.feed(read)
    return events


def split(stream: bytes, size: int) -> list[bytes]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 1000])
def test_every_line_end_gives_the_same_events_however_the_reads_fall(eol: bytes, size: int) -> None:
    stream = eol.join(
        [b": hi", b"data: a", b"", b"event: e", b"data: b", b"data: c", b"", b"data: d", b"", b""]
    )
    expected = [(b"message", b"a"), (b"e", b"b\nc"), (b"message", b"d")]
    assert feed_all(split(stream, size)) == expected


def test_a_crlf_split_across_reads_dispatches_at_the_cr() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\n\r") == [(b"message", b"a")]
    # The LF that completes that CRLF is no blank line of its own.
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\ndata: c\r\n\r\n") == [(b"message", b"b\nc")]


def test_only_the_lf_right_after_a_held_cr_is_skipped() -> None:
    # A line end at a read's end followed by an LF-led read: two line ends, a blank line.
    assert feed_all([b"data: a\n", b"\ndata: b\n\n"]) == [(b"message", b"a"), (b"message", b"b")]
    # A CR, then a read that starts with no LF: nothing is skipped.
    assert feed_all([b"data: a\r", b"data: b\n\n"]) == [(b"message", b"a\nb")]
    # An empty read between the CR and its LF changes nothing.
    assert feed_all([b"data: a\r", b"", b"\ndata: b\n\n"]) == [(b"message", b"a\nb")]


@pytest.mark.parametrize(
    "reads",
    [
        [b"\xef\xbb\xbfdata: a\n\n"],
        [b"\xef", b"\xbb", b"\xbfdata: a\n\n"],
        [b"\xef\xbb", b"\xbf", b"data: a\n\n"],
    ],
    ids=["whole", "split-1-1", "split-2-1"],
)
def test_one_leading_bom_is_dropped(reads: list[bytes]) -> None:
    assert feed_all(reads) == [(b"message", b"a")]


def test_only_a_leading_bom_is_dropped() -> None:
    # A second BOM is part of the first field's name, which then names no field.
    assert feed_all([b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n"]) == [(b"message", b"b")]
    # A first byte that could not start a BOM is read at once.
    assert feed_all([b"d", b"ata: a\n\n"]) == [(b"message", b"a")]
    assert feed_all([b"\xef", b"data: a\n\n"]) == []  # not a BOM: the name is b"\xefdata"


@pytest.mark.parametrize(
    "stream",
    [b":\n\n", b": ping\n\n", b":keep-alive\r\n\r\n", b": a\n: b\n\n\n\n"],
    ids=["bare", "ping", "crlf", "several"],
)
def test_comments_and_keep_alives_dispatch_nothing(stream: bytes) -> None:
    assert feed_all([stream]) == []


def test_a_comment_inside_an_event_does_not_end_it() -> None:
    assert feed_all([b"data: a\n: note\ndata: b\n\n"]) == [(b"message", b"a\nb")]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data:x\n\n", [(b"message", b"x")]),  # no space after the colon
        (b"data:  x\n\n", [(b"message", b" x")]),  # only one space is dropped
        (b"data\n\n", [(b"message", b"")]),  # no colon: the field with an empty value
        (b"data:\n\n", [(b"message", b"")]),
        (b"data: a\ndata:\ndata: b\n\n", [(b"message", b"a\n\nb")]),  # empty lines kept
        (b"data: a:b: c\n\n", [(b"message", b"a:b: c")]),  # the first colon splits
        (b"event:\ndata: a\n\n", [(b"message", b"a")]),  # an empty event name: message
        (b"event: x\nevent: y\ndata: a\n\n", [(b"y", b"a")]),  # the last name wins
        (b"id: 1\nretry: 10\nfoo: bar\ndata: a\n\n", [(b"message", b"a")]),
        (b"id: 1\nevent: x\nretry: 5\n\n", []),  # no data: nothing to dispatch
        (b"DATA: a\n\n", []),  # field names are case-sensitive
    ],
    ids=[
        "no-space",
        "two-spaces",
        "no-colon",
        "empty",
        "empty-lines",
        "colons",
        "empty-event",
        "last-event",
        "id-retry-unknown",
        "no-data",
        "case",
    ],
)
def test_fields(stream: bytes, expected: list[tuple[bytes, bytes]]) -> None:
    assert feed_all([stream]) == expected


def test_the_event_name_is_reset_after_each_blank_line() -> None:
    # After a dispatch, and after a blank line that dispatched nothing.
    assert feed_all([b"event: e\ndata: a\n\ndata: b\n\n"]) == [(b"e", b"a"), (b"message", b"b")]
    assert feed_all([b"event: e\n\ndata: b\n\n"]) == [(b"message", b"b")]


def test_an_unterminated_last_event_is_dropped() -> None:
    assert feed_all([b"data: a\n\ndata: b\n"]) == [(b"message", b"a")]
    assert feed_all([b"data: a"]) == []


# ------------------------------------------------------------------ chunk shapes


def test_a_role_only_first_chunk_is_no_token() -> None:
    for delta in ({"role": "assistant"}, {"role": "assistant", "content": ""}, {"content": None}):
        t = tally(sse(chat_chunk(delta), chat_chunk({"content": "a"})))
        assert t.token_times == [1.0]
        assert t.first_content_at == 1.0


@pytest.mark.parametrize(
    "payload",
    [{}, {"choices": None}, {"choices": []}, {"id": "x", "object": "chat.completion.chunk"}],
    ids=["empty", "null", "empty-list", "no-key"],
)
def test_chunks_without_choices_carry_nothing(payload: dict[str, Any]) -> None:
    t = tally(sse(payload))
    assert (t.token_times, t.usage, t.finish_reason, t.error) == ([], None, "", "")


def test_a_usage_only_chunk_gives_usage_and_no_token() -> None:
    t = tally(sse(chat_chunk({"content": "a"}), {"choices": [], "usage": USAGE}))
    assert t.token_times == [0.0]
    assert t.usage == Usage(prompt_tokens=7, completion_tokens=3)


@pytest.mark.parametrize(
    "last",
    [
        chat_chunk({}, "stop"),
        {"choices": [{"index": 0, "finish_reason": "stop"}]},  # no delta at all
        chat_chunk({"content": None, "role": None}, "stop"),
    ],
    ids=["empty-delta", "no-delta", "null-delta-fields"],
)
def test_finish_reason_on_a_chunk_of_its_own(last: dict[str, Any]) -> None:
    t = tally(sse(chat_chunk({"content": "a"}), last))
    assert t.finish_reason == "stop"
    assert t.token_times == [0.0]


def test_first_content_comes_after_reasoning() -> None:
    t = tally(SGLANG_REASONING)
    assert t.token_times == [1.0, 2.0, 3.0]  # "Think", "Yes", "."
    assert t.first_content_at == 2.0
    events = sse(chat_chunk({"reasoning": "a"}), chat_chunk({"reasoning_content": "b"}))
    assert tally(events).first_content_at is None
    # Content and reasoning in one delta: one token, and content.
    both = tally(sse(chat_chunk({"reasoning_content": "a", "content": "b"})))
    assert (both.token_times, both.first_content_at) == ([0.0], 0.0)


def test_completion_text_is_content() -> None:
    t = tally(VLLM_COMPLETIONS, chat=False)
    assert t.first_content_at == t.token_times[0] == 0.0


# vLLM's tool parsers: the name with id and type (no `arguments` key), then argument fragments
# (vllm/entrypoints/openai/tool_parsers/, e.g. the Hermes parser).
TOOL_CALL_STREAM = sse(
    chat_chunk({"role": "assistant", "content": ""}),
    chat_chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "chatcmpl-tool-1",
                    "type": "function",
                    "function": {"name": "get_weather"},
                }
            ]
        }
    ),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ""}}]}),
    chat_chunk({"tool_calls": [{"index": 0}]}),
    chat_chunk({"tool_calls": []}),
    chat_chunk({}, "tool_calls"),
    {"choices": [], "usage": USAGE},
    "[DONE]",
)


def test_tool_call_pieces_are_generated_tokens() -> None:
    t = tally(TOOL_CALL_STREAM)
    assert t.error == ""
    assert t.token_times == [1.0, 2.0, 3.0]  # the name, two fragments; empty pieces are none
    assert t.first_content_at is None
    assert t.finish_reason == "tool_calls"
    assert t.usage == Usage(prompt_tokens=7, completion_tokens=3)


def test_parallel_tool_calls_in_one_chunk_are_one_token_time() -> None:
    calls = [{"index": i, "function": {"arguments": "{}"}} for i in range(2)]
    assert tally(sse(chat_chunk({"tool_calls": calls}))).token_times == [0.0]


def test_an_empty_data_event_is_a_keep_alive_not_an_error() -> None:
    t = tally([*sse(chat_chunk({"content": "a"})), b"data:\n\n", b"data:  \n\n"])
    assert (t.error, t.token_times) == ("", [0.0])


def test_an_error_mid_stream_keeps_the_tokens_before_it() -> None:
    events = sse(
        chat_chunk({"content": "a"}),
        chat_chunk({"content": "b"}),
        {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}},
        "[DONE]",
    )
    t = tally(events)
    assert (t.error, t.token_times, t.first_content_at) == ("engine died", [0.0, 1.0], 0.0)


@pytest.fixture
async def client(registry: CollectorRegistry) -> Any:
    async with AsyncTestClient(create_app(fake_settings(), registry=registry)) as c:
        await wait_ready(c)
        yield c


@pytest.mark.parametrize(
    ("path", "body", "chat"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi there"}]}, True),
        ("/v1/completions", {"prompt": "x"}, False),
    ],
    ids=["chat", "completions"],
)
async def test_tokenbooth_stream_reads_one_token_per_chunk(
    client: Any, path: str, body: dict[str, Any], chat: bool
) -> None:
    r = await client.post(
        path,
        json={
            "model": "fake-model",
            "max_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
            **body,
        },
    )
    assert r.status_code == 200
    events = [e + b"\n\n" for e in r.content.split(b"\n\n") if e]
    t = tally(events, chat=chat)
    assert t.error == ""
    assert t.finish_reason == "length"
    assert t.usage is not None and t.usage.completion_tokens == 5
    assert t.usage.prompt_tokens is not None and t.usage.prompt_tokens > 0
    assert len(t.token_times) == 5
    assert t.first_content_at == t.token_times[0]


async def test_tokenbooth_error_body_reads(client: Any) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 404
    message = error_message(r.content)
    assert message is not None and "no-such-model" in message


def test_a_chunk_of_an_unreadable_shape_is_a_clear_error_not_a_crash() -> None:
    tally = StreamTally(chat=True)
    tally.feed(b'data: {"choices": {"not": "a list"}}\n\n', 1.0)
    assert tally.error.startswith("malformed stream chunk: ")
    assert tally.token_times == []


def test_token_counts_sent_as_floats_still_count() -> None:
    tally = StreamTally(chat=True)
    tally.feed(
        b'data: {"choices": [], "usage": {"prompt_tokens": 5.0, "completion_tokens": 7}}\n\n', 1.0
    )
    assert tally.usage is not None
    assert (tally.usage.prompt_tokens, tally.usage.completion_tokens) == (5, 7)
