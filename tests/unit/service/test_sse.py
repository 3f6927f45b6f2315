"""``EventStream``: streaming, disconnect cancellation and outside cancellation at the ASGI level.

Driven through a real Litestar app with hand-made ``receive``/``send`` so the disconnect can be
placed exactly (mid-stream, before the first chunk, after the end).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.exceptions import LitestarException

from service.routes.sse import EventStream


class _Probe:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.closed = asyncio.Event()
        self.cancelled = False


def _app(probe: _Probe, chunks_before_wait: int) -> Litestar:
    async def gen() -> AsyncIterator[bytes]:
        try:
            for i in range(chunks_before_wait):
                yield f"data: {i}\n\n".encode()
            await probe.release.wait()
            yield b"data: last\n\n"
        except asyncio.CancelledError:
            probe.cancelled = True
            raise
        finally:
            probe.closed.set()

    @get("/s", sync_to_thread=False)
    def stream() -> EventStream:
        return EventStream(gen(), media_type="text/event-stream", headers={"X-Test": "1"})

    return Litestar([stream])


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/s",
        "raw_path": b"/s",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }


class _Client:
    """ASGI receive/send pair; ``disconnect()`` makes the next ``receive`` say the client left."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._gone = asyncio.Event()
        self._request_sent = False

    def disconnect(self) -> None:
        self._gone.set()

    async def receive(self) -> dict[str, Any]:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


async def _run(app: Litestar, client: _Client) -> asyncio.Task[None]:
    task = asyncio.ensure_future(app(_scope(), client.receive, client.send))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    return task


async def test_streams_every_chunk_and_ends_cleanly() -> None:
    probe, client = _Probe(), _Client()
    task = await _run(_app(probe, 2), client)
    probe.release.set()
    await asyncio.wait_for(task, 2)
    start = client.sent[0]
    assert start["status"] == 200
    assert (b"x-test", b"1") in start["headers"]
    assert client.bodies() == [b"data: 0\n\n", b"data: 1\n\n", b"data: last\n\n", b""]
    assert client.sent[-1]["more_body"] is False
    assert not probe.cancelled
    assert task.cancelling() == 0
    # The disconnect watcher does not outlive the response.
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


@pytest.mark.parametrize("chunks_before_wait", [0, 3])
async def test_disconnect_cancels_the_generator_without_error(chunks_before_wait: int) -> None:
    probe, client = _Probe(), _Client()
    task = await _run(_app(probe, chunks_before_wait), client)
    assert len(client.bodies()) == chunks_before_wait
    client.disconnect()
    await asyncio.wait_for(task, 2)  # returns normally: a client leaving is not an error
    assert probe.cancelled
    assert probe.closed.is_set()
    assert task.cancelling() == 0
    assert not any(m.get("more_body") is False for m in client.sent)


async def test_disconnect_after_the_end_cancels_nothing() -> None:
    probe, client = _Probe(), _Client()
    task = await _run(_app(probe, 1), client)
    probe.release.set()
    client.disconnect()  # both ready in the same loop turn
    await asyncio.wait_for(task, 2)
    assert not probe.cancelled
    assert client.bodies()[-1] == b""
    assert task.cancelling() == 0


async def test_cancellation_from_outside_still_propagates() -> None:
    probe, client = _Probe(), _Client()
    task = await _run(_app(probe, 1), client)
    task.cancel()  # e.g. the server shutting down: not swallowed as a disconnect
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert probe.cancelled


async def test_shutdown_cancel_in_the_same_turn_as_a_disconnect_still_propagates() -> None:
    probe, client = _Probe(), _Client()
    task = await _run(_app(probe, 1), client)
    client.disconnect()
    await asyncio.sleep(0)  # the watcher sees the disconnect and cancels the task...
    task.cancel()  # ...and the server cancels it too before it runs again
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert probe.cancelled


async def test_a_body_that_swallows_the_cancellation_stops_being_sent() -> None:
    steps: list[int] = []

    async def stubborn() -> AsyncIterator[bytes]:
        for i in range(50):
            try:
                await asyncio.sleep(0.005)
            except asyncio.CancelledError:
                steps.append(-1)  # swallowed, as some libraries do
            steps.append(i)
            yield b"data: x\n\n"

    @get("/s", sync_to_thread=False)
    def stream() -> EventStream:
        return EventStream(stubborn(), media_type="text/event-stream")

    client = _Client()
    task = await _run(Litestar([stream]), client)
    client.disconnect()
    await asyncio.wait_for(task, 2)
    assert -1 in steps
    assert len(steps) < 10  # stopped right after the swallowed cancellation, not at 50
    assert task.cancelling() == 0
    assert client.sent[-1].get("more_body") is not False


async def test_a_failing_receive_fails_the_response() -> None:
    probe = _Probe()

    class Broken(_Client):
        async def receive(self) -> dict[str, Any]:
            if not self._request_sent:
                return await super().receive()
            raise RuntimeError("transport broke")

    task = await _run(_app(probe, 1), Broken())
    # Litestar wraps errors raised after the response started.
    with pytest.raises(LitestarException) as info:
        await asyncio.wait_for(task, 2)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "transport broke" in str(info.value.__cause__)
    assert probe.closed.is_set()
