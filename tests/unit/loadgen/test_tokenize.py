"""Tokens the way the server counts them (``loadgen.tokenize``): the server's tokenize endpoint
in vLLM's, SGLang's and llama.cpp's shapes, the default's fallback to the built-in tokenizer,
each request's token counts and their source, and the per-point usage mismatch rate.

The servers here are small in-test HTTP servers on loopback with the request and response
shapes of each project's source (see :mod:`loadgen.tokenize`), counting with SmolLM2's real
tokenizer, so a cut at a token boundary is a real BPE cut.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from tokenizers import Tokenizer as HFTokenizer

from loadgen.results import Col, Point, Tokenizer, TokensSource
from loadgen.spec import LengthDist, WorkloadSpec
from loadgen.sse import Usage
from loadgen.summary import summarize_requests, usage_mismatch_rate
from loadgen.tokenize import (
    PROBE_TEXT,
    ServerTokenizer,
    TokenizeError,
    probe_tokenizer,
    request_tokens,
    server_tokenizer,
)
from loadgen.workload import (
    TOKENIZER_DEFAULT,
    TOKENIZER_SERVER,
    TokenCounter,
    WordCounter,
    build_workload,
    choose_tokenizer,
)
from service.launch import LOOPBACK
from tests.support.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def smollm2_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> HFTokenizer:
    """SmolLM2's real tokenizer (from the tiny model's tokenizer.json)."""
    model = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return HFTokenizer.from_file(str(model / "tokenizer.json"))


class ByteTokenizer:
    """One token per UTF-8 byte: a server whose tokens are nothing like the harness's words."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode(errors="ignore")


class SmolLM2:
    """SmolLM2's real BPE tokenizer, as a server holding it would count."""

    def __init__(self, tok: HFTokenizer) -> None:
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids))


def _loopback(
    handler: type[BaseHTTPRequestHandler],
) -> tuple[ThreadingHTTPServer, str, threading.Thread]:
    """A threaded HTTP server on a free loopback port, its URL, and its (unstarted) thread."""
    httpd = ThreadingHTTPServer((LOOPBACK, 0), handler)
    url = f"http://{LOOPBACK}:{httpd.server_address[1]}"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    return httpd, url, thread


class FakeTokenizeServer:
    """A loopback server with one project's tokenize shapes, recording every call.

    ``shape`` is ``vllm``, ``sglang`` (``/detokenize`` answers ``text``, with the leading space
    a SentencePiece vocabulary decodes), ``llamacpp`` or ``none`` (404 everywhere).
    ``drop_first`` closes the first connection without an answer, as a server that had closed
    a kept-alive connection does.
    """

    def __init__(
        self, shape: str, tokenizer: SmolLM2 | ByteTokenizer, *, drop_first: bool = False
    ) -> None:
        self.shape = shape
        self.tok = tokenizer
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.drop_first = drop_first
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body in separate writes: no 40 ms stall

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if fake.drop_first:
                    fake.drop_first = False
                    self.close_connection = True
                    return
                fake.calls.append((self.path, body))
                status, answer = fake.answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd, self.url, self.thread = _loopback(Handler)

    def ids(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self.shape == "none":
            return 404, {"detail": "Not Found"}
        if path == "/tokenize" and self.shape == "llamacpp":
            if "content" not in body:  # llama.cpp: no content, no tokens (still a 200)
                return 200, {"tokens": []}
            ids = self.ids(body["content"])
            if body.get("with_pieces"):
                return 200, {"tokens": [{"id": i, "piece": self.tok.decode([i])} for i in ids]}
            return 200, {"tokens": ids}
        if path == "/tokenize":
            if "prompt" not in body:
                return 400, {"error": {"message": "prompt: field required"}}
            ids = self.ids(body["prompt"])
            return 200, {"count": len(ids), "max_model_len": 2048, "tokens": ids}
        if path == "/detokenize":
            text = self.tok.decode(body["tokens"])
            key = {"vllm": "prompt", "sglang": "text", "llamacpp": "content"}[self.shape]
            return 200, {key: " " + text if self.shape == "sglang" else text}
        return 404, {"detail": "Not Found"}

    def count(self, text: str) -> int:
        """The endpoint's own count of ``text``, asked over HTTP (no client cache)."""
        import requests

        if self.shape == "llamacpp":
            r = requests.post(self.url + "/tokenize", json={"content": text}, timeout=5)
            return len(r.json()["tokens"])
        r = requests.post(self.url + "/tokenize", json={"prompt": text}, timeout=5)
        return int(r.json()["count"])

    def paths(self) -> list[str]:
        return [p for p, _ in self.calls]


@pytest.fixture
def serve(smollm2_tokenizer: HFTokenizer) -> Iterator[Any]:
    """Start fake tokenize servers, ``serve(shape, drop_first=False, by_bytes=False)``.

    They count with SmolLM2's tokenizer, or one token per byte; all stop afterwards.
    """
    started: list[FakeTokenizeServer] = []

    def start(
        shape: str, *, drop_first: bool = False, by_bytes: bool = False
    ) -> FakeTokenizeServer:
        tok = ByteTokenizer() if by_bytes else SmolLM2(smollm2_tokenizer)
        fake = FakeTokenizeServer(shape, tok, drop_first=drop_first)
        fake.thread.start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.httpd.shutdown()
        fake.httpd.server_close()


def synthetic(n: int) -> WorkloadSpec:
    return WorkloadSpec(
        kind="synthetic", input_tokens=LengthDist(value=n), output_tokens=LengthDist(value=8)
    )


def no_builtin() -> tuple[TokenCounter, str]:
    raise AssertionError("the built-in tokenizer must not be loaded when the server has one")


# ------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("shape", ["vllm", "sglang", "llamacpp"])
def test_probe_finds_each_shape_and_cuts_exactly(serve: Any, shape: str) -> None:
    fake = serve(shape)
    tok, why = probe_tokenizer(fake.url, "auto", model="m")
    assert tok is not None, why
    assert why == ""
    assert tok.dialect == ("llamacpp" if shape == "llamacpp" else "vllm")
    text = "Tokenization isn't whitespace-splitting: antidisestablishmentarianism! " * 3
    assert tok.count(text) == fake.count(text) == len(fake.ids(text))
    for n in (1, 5, 17):
        cut = tok.truncate(text, n)
        assert text.startswith(cut)
        assert fake.count(cut) == n
    assert tok.truncate(text, 10_000) == text
    assert tok.truncate(text, 0) == ""
    assert tok.count("") == 0


def test_vllm_shape_requests_carry_the_model_and_no_special_tokens(serve: Any) -> None:
    fake = serve("vllm")
    tok = server_tokenizer(fake.url, "vllm", model="SmolLM2")
    tok.truncate("one two three four five", 2)
    tokenize = [b for p, b in fake.calls if p == "/tokenize"]
    detokenize = [b for p, b in fake.calls if p == "/detokenize"]
    assert tokenize[0] == {"model": "SmolLM2", "prompt": PROBE_TEXT, "add_special_tokens": False}
    assert all(b["add_special_tokens"] is False and b["model"] == "SmolLM2" for b in tokenize)
    assert detokenize and all(b["model"] == "SmolLM2" for b in detokenize)
    # No model id: no model key (SGLang's field is a str with a default, never null).
    bare = ServerTokenizer(fake.url, "vllm")
    bare.count("hello")
    assert fake.calls[-1] == ("/tokenize", {"prompt": "hello", "add_special_tokens": False})


def test_llamacpp_shape_cuts_from_pieces_without_detokenize(serve: Any) -> None:
    fake = serve("llamacpp")
    tok = server_tokenizer(fake.url, "llamacpp")
    assert tok.dialect == "llamacpp"
    fake.calls.clear()
    text = "time person year way day thing man world life hand part child"
    cut = tok.truncate(text, 4)
    assert fake.count(cut) == 4
    assert "/detokenize" not in fake.paths()
    bodies = [b for _, b in fake.calls]
    assert bodies[0] == {"content": text, "add_special": False, "with_pieces": True}


def test_a_known_kind_probes_only_its_own_shape(serve: Any) -> None:
    fake = serve("llamacpp")
    tok, _ = probe_tokenizer(fake.url, "llamacpp")
    assert tok is not None
    assert all("content" in b for _, b in fake.calls)  # never vLLM's {"prompt": ...}
    auto = serve("llamacpp")
    tok, _ = probe_tokenizer(auto.url, "auto")
    assert tok is not None
    # Unknown kind: vLLM's shape first; llama.cpp's empty answer to it is not taken for one.
    assert [("prompt" in b, "content" in b) for _, b in auto.calls][:2] == [
        (True, False),
        (False, True),
    ]


@pytest.mark.parametrize("kind", ["tgi", "tokenbooth"])
def test_kinds_without_a_usable_endpoint_are_not_probed(serve: Any, kind: str) -> None:
    fake = serve("vllm")
    tok, why = probe_tokenizer(fake.url, kind)
    assert tok is None
    assert why
    assert fake.calls == []


def test_server_setting_fails_clearly_without_an_endpoint(serve: Any) -> None:
    fake = serve("none")
    with pytest.raises(TokenizeError, match="has no usable tokenize endpoint") as err:
        server_tokenizer(fake.url, "openai")
    assert fake.url in err.value.detail
    assert "openai" in err.value.detail
    assert "HTTP 404" in err.value.detail
    with pytest.raises(TokenizeError, match="tokenbooth has no tokenize endpoint"):
        choose_tokenizer(
            TOKENIZER_SERVER,
            url=fake.url,
            kind="tokenbooth",
            model="m",
            headers={},
            builtin=no_builtin,
        )


def test_a_connection_closed_before_the_answer_is_tried_once_more(serve: Any) -> None:
    fake = serve("vllm", drop_first=True)
    tok = ServerTokenizer(fake.url, "vllm")
    assert tok.count("one two three") == len(fake.ids("one two three"))
    assert tok.calls == 2
    assert fake.paths() == ["/tokenize"]


def test_an_unreadable_answer_names_the_endpoint(serve: Any) -> None:
    fake = serve("vllm")
    tok = ServerTokenizer(fake.url, "llamacpp")  # vLLM's server asked in llama.cpp's shape
    with pytest.raises(TokenizeError, match=rf"^{fake.url}/tokenize: HTTP 400"):
        tok.count("hello")


# ------------------------------------------------------------------------------ workloads


@pytest.mark.parametrize("shape", ["vllm", "llamacpp"])
def test_server_built_prompts_are_exactly_input_tokens_by_the_servers_count(
    serve: Any, shape: str
) -> None:
    fake = serve(shape, by_bytes=True)
    choice = choose_tokenizer(
        TOKENIZER_SERVER, url=fake.url, kind="auto", model="m", headers={}, builtin=no_builtin
    )
    tok = choice.counter
    assert isinstance(tok, ServerTokenizer)
    dialect = "llamacpp" if shape == "llamacpp" else "vllm"
    assert choice.environment() == {
        Tokenizer.SOURCE: "server",
        Tokenizer.DETAIL: f"{fake.url}/tokenize ({dialect} shape)",
        Tokenizer.WARNING: "",
    }
    before = tok.calls
    items = build_workload(synthetic(64), tok, 40, seed=5)
    calls = tok.calls - before
    assert [fake.count(it.prompt or "") for it in items] == [64] * 40
    assert all(it.input_tokens == 64 for it in items)
    assert len({it.prompt for it in items}) == 40  # distinct prompts: no shared prefix cache
    # One token per byte: 64 bytes is about a dozen words, not 64.
    assert all(WordCounter().count(it.prompt or "") < 20 for it in items)
    # Calls per prompt: tokenize, detokenize (not for llama.cpp's pieces), count the cut.
    assert calls == 40 * (2 if shape == "llamacpp" else 3)


def test_default_uses_the_servers_endpoint_when_it_has_one(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = serve("sglang")
    with caplog.at_level(logging.WARNING, logger="tokenbooth.loadgen"):
        choice = choose_tokenizer(
            TOKENIZER_DEFAULT,
            url=fake.url,
            kind="sglang",
            model="m",
            headers={},
            builtin=no_builtin,
        )
    assert choice.source == "server"
    assert choice.warning == ""
    assert not caplog.records
    items = build_workload(synthetic(9), choice.counter, 5, seed=1)
    assert [fake.count(it.prompt or "") for it in items] == [9] * 5


def test_default_falls_back_to_the_builtin_tokenizer_with_a_warning(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = serve("none")
    builtin = WordCounter()
    with caplog.at_level(logging.WARNING, logger="tokenbooth.loadgen"):
        choice = choose_tokenizer(
            TOKENIZER_DEFAULT,
            url=fake.url,
            kind="auto",
            model="m",
            headers={},
            builtin=lambda: (builtin, "whitespace words (test)"),
        )
    assert choice.counter is builtin
    assert choice.source == "builtin"
    assert choice.detail == "whitespace words (test)"
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert fake.url in record.getMessage()
    assert "whitespace words (test)" in record.getMessage()
    env = choice.environment()
    assert env[Tokenizer.SOURCE] == "builtin"
    assert fake.url in env[Tokenizer.WARNING]
    assert "HTTP 404" in env[Tokenizer.WARNING]  # why: what the probe got
    items = build_workload(synthetic(12), choice.counter, 4, seed=0)
    assert [builtin.count(it.prompt or "") for it in items] == [12] * 4


def test_a_200_prompt_workload_costs_three_calls_a_prompt(serve: Any) -> None:
    # What the default costs against vLLM's shape: 200 prompts of 64..512 tokens.
    fake = serve("vllm")
    tok = server_tokenizer(fake.url, "vllm")
    spec = WorkloadSpec(
        kind="synthetic",
        input_tokens=LengthDist(dist="uniform", min=64, max=512),
        output_tokens=LengthDist(value=8),
    )
    before = tok.calls
    items = build_workload(spec, tok, 200, seed=2)
    assert tok.calls - before == 600
    assert all(fake.count(it.prompt or "") == it.input_tokens for it in items[:20])


# ------------------------------------------------------------------------------ per request


def test_usage_is_the_source_when_sent_and_is_checked_against_the_chunks() -> None:
    t = request_tokens(
        Usage(prompt_tokens=70, completion_tokens=8), chunks=8, workload_prompt=64, ok=True
    )
    assert (t.prompt, t.completion, t.source, t.mismatch) == (70, 8, TokensSource.USAGE, False)
    t = request_tokens(
        Usage(prompt_tokens=70, completion_tokens=9), chunks=8, workload_prompt=64, ok=True
    )
    assert (t.completion, t.source, t.mismatch) == (9, TokensSource.USAGE, True)
    # A usage object with one count: the other reads as 0, as the server said nothing.
    t = request_tokens(Usage(completion_tokens=3), chunks=3, workload_prompt=64, ok=True)
    assert (t.prompt, t.completion, t.mismatch) == (0, 3, False)


def test_without_usage_the_chunks_and_the_workloads_count_are_the_source() -> None:
    t = request_tokens(None, chunks=8, workload_prompt=64, ok=True)
    assert (t.prompt, t.completion, t.source, t.mismatch) == (64, 8, TokensSource.CHUNKS, False)
    # An empty completion (the model's first token was EOS) is a count too: zero.
    t = request_tokens(None, chunks=0, workload_prompt=64, ok=True)
    assert (t.prompt, t.completion, t.source) == (64, 0, TokensSource.CHUNKS)
    # Failed mid-stream: the chunks that came are counted.
    t = request_tokens(None, chunks=3, workload_prompt=64, ok=False)
    assert (t.completion, t.source) == (3, TokensSource.CHUNKS)
    # Failed before any token: no count.
    t = request_tokens(None, chunks=0, workload_prompt=64, ok=False)
    assert (t.prompt, t.completion, t.source, t.mismatch) == (0, 0, TokensSource.NONE, False)


# ------------------------------------------------------------------------------ mismatch rate


def rows(*specs: tuple[bool, str, bool]) -> pd.DataFrame:
    """Request rows from ``(ok, tokens source, usage mismatch)``, 10 ms apart."""
    out = []
    for i, (ok, source, mismatch) in enumerate(specs):
        out.append(
            {
                Col.SENT_AT: 100.0 + i * 0.01,
                Col.FINISHED_AT: 100.1 + i * 0.01,
                Col.SCHEDULE_LAG_S: 0.0,
                Col.TTFT_S: 0.02,
                Col.TTFT_FROM_SCHEDULE_S: 0.02,
                Col.E2E_S: 0.1,
                Col.E2E_FROM_SCHEDULE_S: 0.1,
                Col.TPOT_S: 0.01,
                Col.ITL_S: [0.01] * 7,
                Col.PROMPT_TOKENS: 16,
                Col.COMPLETION_TOKENS: 8,
                Col.TOKENS_SOURCE: source,
                Col.USAGE_MISMATCH: mismatch,
                Col.OK: ok,
            }
        )
    return pd.DataFrame(out)


def test_mismatch_rate_is_the_share_of_ok_usage_rows_that_disagree() -> None:
    usage, chunks = TokensSource.USAGE, TokensSource.CHUNKS
    frame = rows(
        (True, usage, True),
        (True, usage, False),
        (True, usage, False),
        (True, usage, False),
        (True, chunks, False),  # nothing to compare: not in the denominator
        (False, usage, True),  # failed: not counted
        (False, TokensSource.NONE, False),
    )
    assert usage_mismatch_rate(frame[frame[Col.OK]]) == pytest.approx(0.25)
    summary = summarize_requests(frame, 1.0, n_resamples=0)
    assert summary[Point.USAGE_MISMATCH_RATE] == pytest.approx(0.25)


def test_mismatch_rate_is_nan_without_usage_and_zero_when_all_agree() -> None:
    chunks_only = rows((True, TokensSource.CHUNKS, False), (True, TokensSource.CHUNKS, False))
    assert math.isnan(
        summarize_requests(chunks_only, 1.0, n_resamples=0)[Point.USAGE_MISMATCH_RATE]
    )
    agree = rows((True, TokensSource.USAGE, False), (True, TokensSource.USAGE, False))
    assert summarize_requests(agree, 1.0, n_resamples=0)[Point.USAGE_MISMATCH_RATE] == 0.0


def test_mismatch_rate_of_rows_recorded_before_the_source_column() -> None:
    # Then every ok row had usage (a row without it failed), so all ok rows count.
    legacy = rows((True, "", True), (True, "", False), (False, "", True)).drop(
        columns=[Col.TOKENS_SOURCE]
    )
    assert summarize_requests(legacy, 1.0, n_resamples=0)[Point.USAGE_MISMATCH_RATE] == 0.5


# ------------------------------------------------------------------------------ the harness


class _StreamServer:
    """Streams a fixed SSE body for any POST: three tokens, with or without a usage chunk."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                chunks: list[dict[str, Any]] = [
                    {"choices": [{"index": 0, "delta": {"content": w}}]} for w in "abc"
                ]
                chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
                if self.path.endswith("/usage/v1/chat/completions"):
                    chunks.append(
                        {"choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 4}}
                    )
                data = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks)
                data += b"data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd, self.url, thread = _loopback(Handler)
        thread.start()


def test_a_stream_without_usage_is_an_ok_row_counted_from_its_chunks() -> None:
    # loadgen.users imports Locust (gevent monkey-patching): measured in a child process.
    server = _StreamServer()
    script = textwrap.dedent(
        f"""
        import json, sys
        from locust.env import Environment
        from loadgen.users import measure_request, new_session

        session = new_session(Environment(), pool_size=2)
        body = {{"model": "m", "messages": [{{"role": "user", "content": "hi"}}], "stream": True}}
        out = {{}}
        for name, url in (("none", {server.url!r}), ("usage", {server.url + "/usage"!r})):
            out[name] = measure_request(
                session, url, "chat", body, timeout_s=10, prompt_tokens=64
            )
        json.dump(out, sys.stdout, default=str)
        """
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=Path(__file__).resolve().parents[3],
        )
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    plain, usage = out["none"], out["usage"]
    assert plain[Col.OK] is True, plain[Col.ERROR]
    assert plain[Col.ERROR] == ""
    assert plain[Col.TOKENS_SOURCE] == TokensSource.CHUNKS
    assert (plain[Col.PROMPT_TOKENS], plain[Col.COMPLETION_TOKENS]) == (64, 3)
    assert plain[Col.USAGE_MISMATCH] is False
    assert usage[Col.OK] is True, usage[Col.ERROR]
    assert usage[Col.TOKENS_SOURCE] == TokensSource.USAGE
    assert (usage[Col.PROMPT_TOKENS], usage[Col.COMPLETION_TOKENS]) == (21, 4)
    assert usage[Col.USAGE_MISMATCH] is True  # 4 by usage, 3 chunks
