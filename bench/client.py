"""The benchmarks' side of the wire: a minimal SSE streaming client and ``/metrics`` reads."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from telemetry import names

__all__ = ["SSEConnection", "histogram_totals", "scrape", "wait_idle"]


class SSEConnection:
    """One keep-alive HTTP/1.1 connection that streams SSE responses with minimal parsing.

    The benchmark client shares the machine's cores with the service; httpx/h11 parse every
    chunk in Python and, while a batch's clients re-send, that CPU delays the next batch. This
    client does only what the measurement needs: write the request, read chunked frames.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    def to(cls, base_url: str) -> SSEConnection:
        """A connection to ``http://host:port`` (not opened until the first request)."""
        host, port = base_url.removeprefix("http://").split(":")
        return cls(host, int(port))

    async def request(
        self, path: str, body: bytes, chunks: list[float] | None = None
    ) -> tuple[float, int]:
        """(seconds to the first token chunk, completion tokens from the usage chunk).

        With ``chunks``, the arrival time of every content chunk is appended to it as it comes.
        """
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        t0 = time.perf_counter()
        self.writer.write(head + body)
        status = await self.reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"service answered {status.decode().strip()}")
        while (await self.reader.readline()) not in (b"\r\n", b""):
            pass
        ttft = -1.0
        tail = b""
        while True:
            size = int((await self.reader.readline()).strip(), 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                break
            if b'"text":"' in data and b'"text":""' not in data:
                now = time.perf_counter()
                if ttft < 0:
                    ttft = now - t0
                if chunks is not None:
                    chunks.append(now)
            tail = (tail + data)[-2048:]
        usage = [ln for ln in tail.split(b"\n\n") if b'"usage":{' in ln]
        tokens = json.loads(usage[-1].strip()[len(b"data: ") :])["usage"]["completion_tokens"]
        return ttft, int(tokens)

    def close(self) -> None:
        """Close the connection (a later request opens a new one)."""
        if self.writer is not None:
            self.writer.close()


async def scrape(client: httpx.AsyncClient) -> dict[str, list[Sample]]:
    """The service's ``/metrics`` samples, by metric family name."""
    text = (await client.get("/metrics")).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


async def wait_idle(client: httpx.AsyncClient, limit_s: float = 120.0) -> None:
    """Wait until nothing is queued and no batch worker is busy, so the next raw phase has the
    CPU to itself (an aborted batch still finishes its current engine step)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        families = await scrape(client)
        busy = sum(
            s.value
            for name in (names.TOKENBOOTH_BATCHES_RUNNING, names.TOKENBOOTH_REQUESTS_WAITING)
            for s in families.get(name, [])
        )
        if busy == 0:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("service still busy after the service phase")


async def histogram_totals(client: httpx.AsyncClient, name: str) -> tuple[float, float]:
    """(sum, count) of one of the service's histograms."""
    samples = (await scrape(client)).get(name, [])
    total = sum(s.value for s in samples if s.name.endswith("_sum"))
    count = sum(s.value for s in samples if s.name.endswith("_count"))
    return total, count
