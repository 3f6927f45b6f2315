"""One streamed chat completion over a fresh HTTP/1.1 connection, read with minimal parsing.

``bench compare`` measures two servers with this same client. A fresh connection per request
(``Connection: close``) because servers differ in keep-alive: llama.cpp closes a connection
after a streamed response although it announced keep-alive, so reusing one would cost it a
failed send and a resend that tokenbooth never pays. A loopback connect is tens of
microseconds, the same for both. Bytes go to :class:`loadgen.sse.StreamTally` as they arrive,
the tolerant parser the sweep harness uses for every server kind.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from loadgen.sse import StreamTally, error_message

__all__ = ["Endpoint", "stream_chat"]

_CHAT_PATH = "/v1/chat/completions"
_ERROR_BODY_LIMIT = 65_536


@dataclass(frozen=True)
class Endpoint:
    """Where a server's chat completions answer: host, port and path."""

    host: str
    port: int
    path: str

    @classmethod
    def from_url(cls, base_url: str) -> Endpoint:
        """The chat endpoint under ``http://host:port[/prefix]``.

        Raises:
            ValueError: not a plain ``http://`` URL with a host.
        """
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{base_url!r}: bench compare needs an http://host:port URL")
        prefix = parts.path.rstrip("/")
        return cls(parts.hostname, parts.port or 80, prefix + _CHAT_PATH)


async def _chunked(reader: asyncio.StreamReader, tally: StreamTally) -> None:
    while True:
        size_line = await reader.readline()
        if not size_line:
            raise ConnectionError("connection closed inside a chunked body")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            return
        data = await reader.readexactly(size + 2)
        tally.feed(data[:-2], time.perf_counter())


async def _until_eof(reader: asyncio.StreamReader, tally: StreamTally, length: int | None) -> None:
    left = length
    while left is None or left > 0:
        data = await reader.read(65_536 if left is None else min(left, 65_536))
        if not data:
            if left is not None:
                raise ConnectionError("connection closed before the body's Content-Length")
            return
        tally.feed(data, time.perf_counter())
        if left is not None:
            left -= len(data)


async def stream_chat(endpoint: Endpoint, body: bytes, tally: StreamTally) -> float:
    """POST ``body`` and feed the streamed response into ``tally``; return the send time.

    The send time (``time.perf_counter``) is taken just before the request is written, after
    the connection is open. A non-200 answer sets ``tally.error`` from its body.
    """
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    try:
        head = (
            f"POST {endpoint.path} HTTP/1.1\r\nHost: {endpoint.host}:{endpoint.port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sent = time.perf_counter()
        writer.write(head + body)
        status = await reader.readline()
        if not status:
            raise ConnectionError("the server closed the connection without answering")
        headers: dict[bytes, bytes] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"")
        length = None if chunked else int(headers.get(b"content-length", b"-1"))
        if status.split(b" ", 2)[1:2] != [b"200"]:
            raw = await reader.read(_ERROR_BODY_LIMIT)
            detail = error_message(raw) or raw[:300].decode(errors="replace")
            tally.error = f"{status.decode(errors='replace').strip()}: {detail}"
            return sent
        if chunked:
            await _chunked(reader, tally)
        else:
            await _until_eof(reader, tally, None if length is None or length < 0 else length)
        return sent
    finally:
        writer.close()
