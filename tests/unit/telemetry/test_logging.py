"""JSON log lines bound to request_id / trace_id."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from telemetry import names
from telemetry.logging import (
    REDACTED,
    bind_request,
    configure_logging,
    current_request_id,
    current_trace_id,
    log_event,
    new_request_id,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A configured root logger writing to a StringIO; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("DEBUG", stream=buffer)
    yield buffer
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_one_json_object_per_line_with_base_keys(stream: io.StringIO) -> None:
    logging.getLogger("tokenbooth.test").info("hello %s", "world")
    logging.getLogger("tokenbooth.test").debug("second")
    first, second = lines(stream)
    assert first[names.LOG_EVENT] == "hello world"
    assert first[names.LOG_LEVEL] == "INFO"
    assert first[names.LOG_LOGGER] == "tokenbooth.test"
    assert second[names.LOG_LEVEL] == "DEBUG"
    ts = first[names.LOG_TIMESTAMP]
    assert isinstance(ts, str)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts)
    assert datetime.fromisoformat(ts).utcoffset() is not None
    assert names.LOG_REQUEST_ID not in first
    assert names.LOG_TRACE_ID not in first


def test_bound_request_and_trace_ids(stream: io.StringIO) -> None:
    log = logging.getLogger("tokenbooth.req")
    with bind_request("req-1", TRACE_ID):
        assert current_request_id() == "req-1"
        assert current_trace_id() == TRACE_ID
        log.info("inside")
        with bind_request("req-2", None):
            log.info("nested")
        log.info("back")
    log.info("outside")
    inside, nested, back, outside = lines(stream)
    assert (inside[names.LOG_REQUEST_ID], inside[names.LOG_TRACE_ID]) == ("req-1", TRACE_ID)
    assert nested[names.LOG_REQUEST_ID] == "req-2"
    assert names.LOG_TRACE_ID not in nested
    assert (back[names.LOG_REQUEST_ID], back[names.LOG_TRACE_ID]) == ("req-1", TRACE_ID)
    assert names.LOG_REQUEST_ID not in outside
    assert current_request_id() is None


async def test_binding_follows_tasks_and_threads(stream: io.StringIO) -> None:
    log = logging.getLogger("tokenbooth.async")

    async def in_task(request_id: str) -> None:
        with bind_request(request_id, TRACE_ID):
            await asyncio.sleep(0)
            await asyncio.to_thread(log.info, "from thread")
            await asyncio.sleep(0)
            log.info("from task")

    await asyncio.gather(in_task("req-a"), in_task("req-b"))
    records = [r for r in lines(stream) if r[names.LOG_LOGGER] == "tokenbooth.async"]
    assert len(records) == 4
    by_request: dict[object, list[str]] = {}
    for record in records:
        by_request.setdefault(record[names.LOG_REQUEST_ID], []).append(str(record[names.LOG_EVENT]))
    assert sorted(by_request["req-a"]) == ["from task", "from thread"]
    assert sorted(by_request["req-b"]) == ["from task", "from thread"]


def test_log_event_emits_fields_as_top_level_keys(stream: io.StringIO) -> None:
    log = logging.getLogger("tokenbooth.fields")
    with bind_request("req-9", TRACE_ID):
        log_event(
            log,
            "request.end",
            outcome=names.OUTCOME_STOP,
            prompt_tokens=12,
            completion_tokens=40,
            ttft_s=0.125,
        )
    log_event(log, "queue.full", level=logging.WARNING, waiting=64)
    end, full = lines(stream)
    assert end == {
        names.LOG_TIMESTAMP: end[names.LOG_TIMESTAMP],
        names.LOG_LEVEL: "INFO",
        names.LOG_LOGGER: "tokenbooth.fields",
        names.LOG_EVENT: "request.end",
        names.LOG_REQUEST_ID: "req-9",
        names.LOG_TRACE_ID: TRACE_ID,
        names.LOG_OUTCOME: "stop",
        names.LOG_PROMPT_TOKENS: 12,
        names.LOG_COMPLETION_TOKENS: 40,
        names.LOG_TTFT_S: 0.125,
    }
    assert full[names.LOG_LEVEL] == "WARNING"
    assert full["waiting"] == 64


def test_extra_fields_mapping_is_supported(stream: io.StringIO) -> None:
    logging.getLogger("x").info("plain", extra={"fields": {"status": 429}})
    (record,) = lines(stream)
    assert record[names.LOG_STATUS] == 429


def test_explicit_ids_override_bound_ones(stream: io.StringIO) -> None:
    with bind_request("req-bound", TRACE_ID):
        log_event(logging.getLogger("x"), "request", request_id="req-explicit")
    (record,) = lines(stream)
    assert record[names.LOG_REQUEST_ID] == "req-explicit"
    assert record[names.LOG_TRACE_ID] == TRACE_ID
    assert "request_id_" not in record


def test_request_line_carries_counts_and_timings_only(stream: io.StringIO) -> None:
    assert not set(names.REQUEST_LOG_FIELDS) & {"prompt", "messages", "content", "text"}
    values: dict[str, Any] = {
        names.LOG_REQUEST_ID: "req-1",
        names.LOG_ROUTE: "/v1/chat/completions",
        names.LOG_STATUS: 200,
        names.LOG_OUTCOME: names.OUTCOME_LENGTH,
        names.LOG_ERROR_TYPE: "",
        names.LOG_PROMPT_TOKENS: 7,
        names.LOG_COMPLETION_TOKENS: 16,
        names.LOG_TTFT_S: 0.05,
        names.LOG_DURATION_S: 0.4,
        names.LOG_QUEUE_WAIT_S: 0.001,
        names.LOG_BATCH_SIZE: 4,
    }
    assert set(values) == set(names.REQUEST_LOG_FIELDS)
    with bind_request("req-1", TRACE_ID):
        log_event(logging.getLogger("tokenbooth.request"), names.EVENT_REQUEST, **values)
    (record,) = lines(stream)
    assert record == {
        names.LOG_TIMESTAMP: record[names.LOG_TIMESTAMP],
        names.LOG_LEVEL: "INFO",
        names.LOG_LOGGER: "tokenbooth.request",
        names.LOG_EVENT: "request",
        names.LOG_TRACE_ID: TRACE_ID,
        **values,
    }


def test_text_fields_are_redacted_and_base_keys_protected(stream: io.StringIO) -> None:
    log = logging.getLogger("tokenbooth.redact")
    log_event(log, "oops", prompt="secret prompt", messages=[{"content": "x"}], ts="t")
    (record,) = lines(stream)
    assert record["prompt"] == REDACTED
    assert record["messages"] == REDACTED
    assert "secret prompt" not in stream.getvalue()
    assert record["ts_"] == "t"
    assert record[names.LOG_TIMESTAMP] != "t"


def test_exceptions_and_unserialisable_values(stream: io.StringIO) -> None:
    log = logging.getLogger("tokenbooth.exc")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed", extra={"fields": {"path": io}})
    (record,) = lines(stream)
    assert record[names.LOG_LEVEL] == "ERROR"
    assert isinstance(record["exc"], str)
    assert "RuntimeError: boom" in record["exc"]
    assert str(record["path"]).startswith("<module 'io'")


def test_configure_is_idempotent_and_replaces_stream(stream: io.StringIO) -> None:
    root = logging.getLogger()
    second = io.StringIO()
    configure_logging("INFO", stream=second)
    configure_logging("INFO", stream=second)
    ours = [h for h in root.handlers if getattr(h, "_tokenbooth_handler", False)]
    assert len(ours) == 1
    logging.getLogger("tokenbooth.once").info("once")
    logging.getLogger("tokenbooth.once").debug("filtered by level")
    assert stream.getvalue() == ""
    assert [r[names.LOG_EVENT] for r in lines(second)] == ["once"]


def test_text_format_for_humans(stream: io.StringIO) -> None:
    buffer = io.StringIO()
    configure_logging("INFO", json_format=False, stream=buffer)
    with bind_request("req-t", None):
        log_event(logging.getLogger("tokenbooth.text"), "started", port=8000)
    line = buffer.getvalue().strip()
    assert re.fullmatch(r"\S+Z INFO tokenbooth\.text started request_id=req-t port=8000", line), (
        line
    )


def test_unknown_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        configure_logging("LOUD")


def test_new_request_id_is_unique_and_prefixed() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"req-[0-9a-f]{32}", i) for i in ids)
