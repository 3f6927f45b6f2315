"""``bench compare``'s pure parts, its client and one phase against an in-process SSE server."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from bench import compare
from bench.chat_client import Endpoint, stream_chat
from bench.compare import (
    CompareConfig,
    Level,
    PhaseFigures,
    levels_from,
    phase_figures,
    prompt_stream,
    ratios,
    summarise,
    table_markdown,
)
from bench.compare_cli import assign_urls, register_compare, server_settings
from bench.llama_server import LlamaServerError, find_llama_server, slot_context
from loadgen.sse import StreamTally

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "servers"


# ------------------------------------------------------------------------------ an SSE server


@dataclass
class _Script:
    first_s: float = 0.01  # before the first token
    gap_s: float = 0.005  # between tokens
    tokens: int = 4
    usage_tokens: int | None = None  # what usage says (default: tokens)
    slots: int = 1000  # requests served at once; the rest wait (a stalled server)
    status: int = 200


class _Server:
    """Chat completions streamed as chunked SSE, one chunk per token, usage last."""

    def __init__(self, script: _Script) -> None:
        self.script = script
        self.served = 0
        self.bodies: list[dict[str, object]] = []
        self._slots = asyncio.Semaphore(script.slots)
        self.url = ""
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> _Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        s = self.script
        try:
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            self.bodies.append(json.loads(await reader.readexactly(length)))
            if s.status != 200:
                body = b'{"error": {"message": "no such model"}}'
                writer.write(
                    f"HTTP/1.1 {s.status} Nope\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                return
            async with self._slots:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                await asyncio.sleep(s.first_s)
                for i in range(s.tokens):
                    if i:
                        await asyncio.sleep(s.gap_s)
                    chunk = {"choices": [{"index": 0, "delta": {"content": f" w{i}"}}]}
                    await self._event(writer, json.dumps(chunk))
                n = s.tokens if s.usage_tokens is None else s.usage_tokens
                await self._event(
                    writer, json.dumps({"choices": [], "usage": {"completion_tokens": n}})
                )
                await self._event(writer, "[DONE]")
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                self.served += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _event(writer: asyncio.StreamWriter, payload: str) -> None:
        data = f"data: {payload}\n\n".encode()
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()


@pytest.fixture
async def sse_server() -> AsyncIterator[_Server]:
    async with _Server(_Script()) as server:
        yield server


def _config(**overrides: object) -> CompareConfig:
    base = CompareConfig(
        levels=(Level("closed", 1.0),),
        duration_s=0.5,
        warmup_s=0.1,
        max_tokens=4,
        drain_limit_s=5.0,
        request_timeout_s=5.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def _body() -> bytes:
    return json.dumps({"model": "m", "messages": [], "stream": True}).encode()


# ------------------------------------------------------------------------------ the client


async def test_the_client_reads_a_chunked_stream_and_its_usage(sse_server: _Server) -> None:
    tally = StreamTally(chat=True)
    sent = await stream_chat(Endpoint.from_url(sse_server.url), _body(), tally)
    assert not tally.error
    assert len(tally.token_times) == 4
    assert tally.usage is not None and tally.usage.completion_tokens == 4
    assert tally.first_content_at is not None and tally.first_content_at - sent >= 0.01


async def test_the_client_reports_an_error_status_with_its_message() -> None:
    async with _Server(_Script(status=404)) as server:
        tally = StreamTally(chat=True)
        await stream_chat(Endpoint.from_url(server.url), _body(), tally)
    assert "404" in tally.error and "no such model" in tally.error
    assert tally.token_times == []


def test_an_endpoint_keeps_the_urls_path_prefix_and_refuses_https() -> None:
    assert Endpoint.from_url("http://h:81/proxy/") == Endpoint(
        "h", 81, "/proxy/v1/chat/completions"
    )
    with pytest.raises(ValueError, match="http://"):
        Endpoint.from_url("https://h:443")


# ------------------------------------------------------------------------------ one phase


async def test_a_closed_loop_phase_measures_what_the_server_streams(sse_server: _Server) -> None:
    config = _config()
    phase = await compare._run_phase(
        Level("closed", 2.0),
        Endpoint.from_url(sse_server.url),
        _body,
        config,
        ramp_s=0.02,
        seed=1,
    )
    p = phase_figures(phase, server="s", level="2 streams", repeat=0, max_tokens=4)
    assert p.errors == 0 and p.short == 0 and p.requests >= 10
    # 10 ms to the first token, 5 ms between tokens: the server's truth, within scheduling noise.
    assert 9.0 <= p.ttft_p50_ms <= 25.0
    assert 4.5 <= p.itl_p50_ms <= 12.0
    # Two users, each a request of ~25 ms (4 tokens): about 2 * 4 / 0.025 tok/s in the window.
    assert 150 <= p.tokens_per_s <= 360
    # Measured: sent after the warm-up (not a user's first) and before the window's end; each
    # of them finished.
    measured = [r for r in phase.requests if r.measured]
    t0 = phase.window[0] - phase.warmup_s
    assert all(t0 + 0.1 - 1e-9 <= r.scheduled < phase.window[1] for r in measured)
    assert all(r.done_ok() for r in measured)


async def test_a_closed_loop_window_waits_for_every_users_first_request() -> None:
    # Requests of ~0.3 s, longer than the 0.05 s warm-up: the window opens only once all three
    # users have finished a first request, so it holds none of the start-up's sends.
    async with _Server(_Script(first_s=0.3)) as server:
        config = _config(duration_s=0.5, warmup_s=0.05)
        phase = await compare._run_phase(
            Level("closed", 3.0), Endpoint.from_url(server.url), _body, config, ramp_s=0.05, seed=0
        )
    p = phase_figures(phase, server="s", level="3", repeat=0, max_tokens=4)
    assert p.warmup_s >= 0.3
    assert p.requests >= 3 and p.errors == 0
    assert 300 <= p.ttft_p50_ms <= 400
    # No user's first request is a sample, and every user's second one is.
    firsts = sorted(phase.requests, key=lambda r: r.scheduled)[:3]
    assert not any(r.measured for r in firsts)
    assert sum(r.measured for r in phase.requests) >= 3


async def test_a_window_shorter_than_a_request_still_samples_every_user() -> None:
    # 32 requests of ~0.3 s finishing together (a continuous-batching server) and a window of
    # 0.1 s: counting only the sends inside the window would leave one sample or none.
    async with _Server(_Script(first_s=0.3)) as server:
        config = _config(duration_s=0.1, warmup_s=0.0)
        phase = await compare._run_phase(
            Level("closed", 32.0), Endpoint.from_url(server.url), _body, config, ramp_s=0.03, seed=0
        )
    p = phase_figures(phase, server="s", level="32", repeat=0, max_tokens=4)
    assert p.requests >= 32 and p.errors == 0


async def test_open_loop_latency_runs_from_the_scheduled_send() -> None:
    # One slot: a Poisson stream at 40 req/s against a server that takes ~60 ms per request
    # queues up; a client timing from its actual send would hide that wait.
    script = _Script(first_s=0.05, gap_s=0.003, slots=1)
    async with _Server(script) as server:
        config = _config(duration_s=0.6, warmup_s=0.0, max_in_flight=1000)
        phase = await compare._run_phase(
            Level("poisson", 40.0), Endpoint.from_url(server.url), _body, config, ramp_s=0, seed=3
        )
    p = phase_figures(phase, server="s", level="p", repeat=0, max_tokens=4)
    assert p.errors == 0
    assert p.ttft_p95_ms > 4 * 50  # queued behind others: far above the server's 50 ms
    assert p.send_lag_p95_ms < 50  # sent on schedule: the wait is the server's, not the client's


async def test_open_loop_is_bounded_in_requests_and_in_flight(sse_server: _Server) -> None:
    config = _config(duration_s=1.0, warmup_s=0.0, max_requests=7, max_in_flight=2)
    phase = await compare._run_phase(
        Level("poisson", 200.0), Endpoint.from_url(sse_server.url), _body, config, ramp_s=0, seed=5
    )
    assert len(phase.requests) == 7
    assert phase.truncated
    assert phase.in_flight_waits > 0


async def test_short_outputs_and_cut_off_requests_are_reported() -> None:
    async with _Server(_Script(usage_tokens=3)) as server:
        phase = await compare._run_phase(
            Level("closed", 1.0), Endpoint.from_url(server.url), _body, _config(), ramp_s=0, seed=0
        )
    p = phase_figures(phase, server="s", level="1", repeat=0, max_tokens=4)
    assert p.short == p.requests > 0
    # A request still running when the drain limit passes is an error, not a silent drop.
    async with _Server(_Script(first_s=2.0)) as server:
        config = _config(duration_s=0.2, warmup_s=0.0, drain_limit_s=0.3)
        phase = await compare._run_phase(
            Level("closed", 1.0), Endpoint.from_url(server.url), _body, config, ramp_s=0, seed=0
        )
    p = phase_figures(phase, server="s", level="1", repeat=0, max_tokens=4)
    assert p.errors == p.requests == 1
    assert "cut off" in p.first_error


# ------------------------------------------------------------------------------ pure figures


def _request(scheduled: float, times: list[float], usage: int | None) -> compare._Request:
    req = compare._Request(scheduled, measured=True)
    for t in times:
        chunk = {"choices": [{"delta": {"content": "x"}}]}
        req.tally.feed(f"data: {json.dumps(chunk)}\n\n".encode(), t)
    if usage is not None:
        req.tally.feed(
            f'data: {{"usage": {{"completion_tokens": {usage}}}}}\n\n'.encode(), times[-1]
        )
    req.sent, req.end = scheduled + 0.001, times[-1] + 0.001
    return req


def test_phase_figures_from_known_requests() -> None:
    reqs = [
        _request(10.0, [10.1, 10.2, 10.3], 3),  # TTFT 100 ms, gaps 100 ms
        _request(10.5, [10.8, 10.85, 10.9], 6),  # two tokens per chunk, TTFT 300 ms, gaps 50 ms
    ]
    late = _request(12.5, [12.6], None)  # scheduled after the window: not measured
    late.measured = False
    phase = compare._Phase([*reqs, late], window=(10.0, 12.0), cpu_s=0.5, wall_s=2.0)
    p = phase_figures(phase, server="a", level="l", repeat=1, max_tokens=3)
    assert p.tokens_per_s == pytest.approx((3 + 6) / 2.0)
    assert p.ttft_p50_ms == pytest.approx(200.0)
    assert p.itl_p50_ms == pytest.approx(75.0)
    assert p.e2e_p50_ms == pytest.approx(((0.301) + (0.401)) / 2 * 1000)
    assert (p.requests, p.errors, p.short, p.no_usage) == (2, 0, 0, 0)
    assert p.client_cpu_share == pytest.approx(0.25)
    assert p.send_lag_p95_ms == pytest.approx(1.0)


def _figures(server: str, repeat: int, tps: float, ttft: float, itl: float) -> PhaseFigures:
    return PhaseFigures(
        server=server, level="8 streams", repeat=repeat, tokens_per_s=tps, ttft_p50_ms=ttft,
        ttft_p95_ms=2 * ttft, itl_p50_ms=itl, e2e_p50_ms=10 * ttft, requests=10, errors=0,
        short=0, no_usage=0, client_cpu_share=0.1, send_lag_p95_ms=0.0, in_flight_waits=0,
        truncated=False, window_s=20.0, warmup_s=5.0,
    )  # fmt: skip


def test_ratios_pair_neighbouring_phases_and_the_table_shows_medians_and_spread() -> None:
    a = [_figures("tb", 0, 200.0, 100.0, 20.0), _figures("tb", 1, 180.0, 120.0, 22.0)]
    b = [_figures("ll", 0, 100.0, 200.0, 40.0), _figures("ll", 1, 100.0, 240.0, 40.0)]
    r = ratios(a, b)
    assert r["tokens_per_s"].median == pytest.approx(1.9)
    assert (r["tokens_per_s"].low, r["tokens_per_s"].high) == pytest.approx((1.8, 2.0))
    assert r["itl_p50_ms"].median == pytest.approx(0.525)
    summaries = {("8 streams", "tb"): summarise(a), ("8 streams", "ll"): summarise(b)}
    assert summaries[("8 streams", "tb")].figures["tokens_per_s"].median == 190.0
    table = table_markdown(
        ["8 streams"], summaries, {"8 streams": r}, ("tb", "ll"), with_spread=True
    ).splitlines()
    assert table[0].startswith(
        "| load | tb tok/s | tb TTFT p50 / p95 ms | tb ITL p50 ms | ll tok/s"
    )
    assert table[0].endswith("tb/ll TTFT p95 | tb/ll ITL p50 |")
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:4] == ["8 streams", "190.0 (180.0-200.0)", "110 (100-120) / 220 (200-240)",
                         "21.0 (20.0-22.0)"]  # fmt: skip
    assert cells[4] == "100.0"  # no spread when the repeats agree
    assert cells[7] == "1.90 (1.80-2.00)"
    plain = table_markdown(
        ["8 streams"], summaries, {"8 streams": r}, ("tb", "ll"), with_spread=False
    )
    assert "(" not in plain.splitlines()[2]


def test_a_figure_without_samples_reads_na_not_zero() -> None:
    a = [_figures("tb", 0, 0.0, math.nan, math.nan)]
    b = [_figures("ll", 0, 100.0, 200.0, 40.0)]
    summaries = {("8 streams", "tb"): summarise(a), ("8 streams", "ll"): summarise(b)}
    row = table_markdown(["8 streams"], summaries, {"8 streams": ratios(a, b)}, ("tb", "ll"),
                         with_spread=False).splitlines()[2]  # fmt: skip
    assert "n/a / n/a" in row


# ------------------------------------------------------------------------------ prompts, schedule


def test_prompts_are_seeded_distinct_and_never_repeated_for_a_server() -> None:
    seen: set[str] = set()
    first = [next(s) for s in [prompt_stream(64, 1, seen)] for _ in range(50)]
    assert len(set(first)) == 50
    assert all(len(p.split()) == 64 for p in first)
    assert [next(prompt_stream(64, 1, set()))] == first[:1]  # seeded: the other server's copy
    again = prompt_stream(64, 1, seen)  # the same seed on the same server: fresh prompts only
    assert not {next(again) for _ in range(5)} & set(first)


def test_phase_seeds_match_between_servers_and_differ_between_phases() -> None:
    seeds = {compare._phase_seed(0, li, r) for li in range(5) for r in range(3)}
    assert len(seeds) == 15
    assert compare._phase_seed(0, 2, 1) == compare._phase_seed(0, 2, 1)


def test_the_open_loop_schedule_is_poisson_at_the_rate_and_seeded() -> None:
    from loadgen.arrivals import arrival_offsets

    a = arrival_offsets("poisson", 2.0, 500.0, seed=compare._phase_seed(0, 3, 0))
    b = arrival_offsets("poisson", 2.0, 500.0, seed=compare._phase_seed(0, 3, 0))
    np.testing.assert_array_equal(a, b)
    assert len(a) == pytest.approx(1000, rel=0.1)
    gaps = np.diff(a)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.1)  # exponential: CV 1


def test_levels_and_their_labels() -> None:
    levels = levels_from([1, 8], [1.0, 2.5])
    assert [lv.label for lv in levels] == ["1 stream", "8 streams", "Poisson 1 req/s",
                                           "Poisson 2.5 req/s"]  # fmt: skip
    with pytest.raises(ValueError):
        levels_from([], [])
    with pytest.raises(ValueError):
        levels_from([0], [])


# ------------------------------------------------------------------------------ flags


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_compare(parser.add_subparsers())
    return parser.parse_args(["compare", *argv])


def test_flag_defaults_are_the_issues_table() -> None:
    args = _parse(["http://a:1", "http://b:2"])
    assert (args.streams, args.rates, args.repeats, args.duration_s) == (
        [1, 8, 32],
        [1.0, 2.0],
        2,
        20.0,
    )
    assert (args.prompt_words, args.max_tokens, args.label_a, args.label_b) == (
        64, 64, "tokenbooth", "llamacpp"
    )  # fmt: skip


def test_server_args_and_served_sides() -> None:
    args = _parse(
        ["--serve-a", "tokenbooth", "--server-arg", "batch-workers=2", "--server-arg",
         "engine=fake", "--server-arg-a", "batch_workers=4", "--streams", "none", "http://b:2"]
    )  # fmt: skip
    assert server_settings(args.server_arg, args.server_arg_a) == {
        "batch_workers": "4",
        "engine": "fake",
    }
    assert args.streams == []
    assert args.llama_threads is None
    assert _parse(["--serve-b", "llamacpp", "--llama-threads", "4", "u"]).llama_threads == 4
    assert assign_urls(args.urls, args.serve_a, args.serve_b) == (None, "http://b:2")
    with pytest.raises(ValueError, match="expected 1 URL"):
        assign_urls(["http://a:1", "http://b:2"], "tokenbooth", None)
    with pytest.raises(SystemExit):
        _parse(["--server-arg", "novalue"])
    with pytest.raises(SystemExit):
        _parse(["--rates", "1,-2"])


# ------------------------------------------------------------------------------ servers


def test_llama_server_is_found_in_the_cache_or_named_by_the_error(tmp_path: Path) -> None:
    with pytest.raises(LlamaServerError, match=r"build_llama_server\.sh"):
        find_llama_server({"XDG_CACHE_HOME": str(tmp_path)})
    binary = tmp_path / "tokenbooth" / "peers" / "llama.cpp-1.0" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    os.chmod(binary, 0o755)
    assert find_llama_server({"XDG_CACHE_HOME": str(tmp_path)}) == binary
    with pytest.raises(LlamaServerError, match="not an executable"):
        find_llama_server({"TOKENBOOTH_LLAMA_SERVER": str(tmp_path / "nope")})
    assert slot_context(64, 64) % 256 == 0 and slot_context(64, 64) >= 64 * 2 + 64


@pytest.mark.parametrize(("kind", "busy"), [("tokenbooth", 0.0), ("llamacpp", 0.0)])
async def test_in_flight_reads_each_servers_own_gauges(kind: str, busy: float) -> None:
    text = (FIXTURES / kind / "metrics.txt").read_text()

    class _Client:
        async def get(self, path: str) -> object:
            assert path == "/metrics"
            return type("R", (), {"status_code": 200, "text": text})()

    assert await compare._in_flight(_Client()) == busy  # type: ignore[arg-type]
    running = {
        "tokenbooth": "tokenbooth_requests_running",
        "llamacpp": "llamacpp:requests_processing",
    }
    loaded = "\n".join(
        line.rsplit(" ", 1)[0] + " 3" if line.startswith(running[kind]) else line
        for line in text.splitlines()
    )

    class _Busy(_Client):
        async def get(self, path: str) -> object:
            return type("R", (), {"status_code": 200, "text": loaded + "\n"})()

    assert await compare._in_flight(_Busy()) == 3.0  # type: ignore[arg-type]
