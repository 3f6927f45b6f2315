"""llama.cpp's ``llama-server`` on loopback: the third-party peer the integration tests measure.

``scripts/build_llama_server.sh`` builds the binary once per machine and ``scripts/test.sh``
exports its path as ``TOKENBOOTH_LLAMA_SERVER``. This module starts it on a GGUF, waits until
it answers ``/health`` and stops its whole process group. Run as a module it records what the
server answers into the fixture files adapters are unit-tested against::

    python -m tests.support.llama_server --record tests/fixtures/servers/llamacpp
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import httpx

from bench.llama_server import LLAMA_SERVER_ENV, LlamaServer, LlamaServerError
from bench.llama_server import start_llama_server as _start
from service.launch import free_port
from service.models.paths import default_gguf_path

__all__ = [
    "LLAMA_SERVER_ENV",
    "SLOT_TOKENS",
    "LlamaServer",
    "LlamaServerError",
    "context_size",
    "llama_server_binary",
    "record_fixtures",
    "running_llama_server",
    "start_llama_server",
]

SLOT_TOKENS: Final = 512
"""Context per slot: a 64-token prompt and 64 generated tokens inside SmolLM2's chat template
(whose default system prompt alone is about 30 tokens), with room to spare."""

# llama.cpp reads every command-line option from a LLAMA_ARG_* variable too, so the host's
# shell could otherwise reconfigure the peer behind the test's back.

_RECORD_CHAT: Final[dict[str, Any]] = {
    "messages": [{"role": "user", "content": "Name three colours."}],
    "max_tokens": 16,
    "temperature": 0,
}
_RECORD_TOKENIZE: Final[dict[str, Any]] = {"content": "Hello world: 1234 tokens, counted twice."}


def llama_server_binary(environ: Mapping[str, str] | None = None) -> Path | None:
    """The binary ``TOKENBOOTH_LLAMA_SERVER`` names, or None when it is unset."""
    value = (os.environ if environ is None else environ).get(LLAMA_SERVER_ENV, "")
    return Path(value).expanduser() if value else None


def context_size(parallel: int) -> int:
    """The ``-c`` that gives each of ``parallel`` slots :data:`SLOT_TOKENS` of context.

    With an explicit ``-np`` llama-server splits its context evenly between the slots.
    """
    return parallel * SLOT_TOKENS


def start_llama_server(
    *,
    binary: Path,
    gguf: Path,
    port: int,
    log_path: Path,
    parallel: int = 4,
    threads: int = 2,
    ctx: int | None = None,
    ready_timeout_s: float = 120.0,
) -> LlamaServer:
    """:func:`bench.llama_server.start_llama_server` with the tests' defaults: ``parallel``
    slots of :data:`SLOT_TOKENS` context each unless ``ctx`` says otherwise.

    Raises:
        LlamaServerError: the server exited, or was not ready in time (it is stopped then).
    """
    return _start(
        binary,
        gguf,
        log_path,
        parallel=parallel,
        threads=threads,
        ctx=context_size(parallel) if ctx is None else ctx,
        port=port,
        ready_timeout_s=ready_timeout_s,
    )


@contextlib.contextmanager
def running_llama_server(
    *,
    binary: Path,
    gguf: Path,
    port: int,
    log_path: Path,
    parallel: int = 4,
    threads: int = 2,
    ctx: int | None = None,
) -> Iterator[LlamaServer]:
    """:func:`start_llama_server` for a ``with`` block, stopped when the block ends."""
    server = start_llama_server(
        binary=binary,
        gguf=gguf,
        port=port,
        log_path=log_path,
        parallel=parallel,
        threads=threads,
        ctx=ctx,
    )
    try:
        yield server
    finally:
        server.stop()


def _exchange(response: httpx.Response, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"method": response.request.method, "path": response.request.url.path}
    if body is not None:
        request["body"] = dict(body)
    # Raw header pairs keep the server's spelling, order and any repeated header.
    headers = [[name.decode(), value.decode()] for name, value in response.headers.raw]
    return {"request": request, "status": response.status_code, "headers": headers}


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_json(path: Path, value: Any) -> Path:
    return _write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def record_fixtures(url: str, out_dir: Path) -> list[Path]:
    """Record a live llama-server's answers into fixture files under ``out_dir``.

    ``models.json`` is the ``/v1/models`` body, ``chat_stream.txt`` the SSE body of a streamed
    chat completion, ``tokenize.json`` a ``/tokenize`` request and its response body,
    ``headers.json`` the response headers of a streamed and a non-streamed chat completion and
    of ``/metrics``, and ``metrics.txt`` the ``/metrics`` body after all of them, so its
    counters are not zero.

    Returns:
        The files written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # A connection per request: llama-server closes the connection after a streamed response
    # although it answered "Keep-Alive", so a reused one can die under the next request.
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=url, timeout=60, trust_env=False, limits=no_reuse) as client:
        models = client.get("/v1/models").raise_for_status()
        chat = _RECORD_CHAT | {"model": models.json()["data"][0]["id"]}
        streamed_body = chat | {"stream": True, "stream_options": {"include_usage": True}}
        with client.stream("POST", "/v1/chat/completions", json=streamed_body) as streamed:
            streamed.raise_for_status()
            streamed.read()
        plain = client.post("/v1/chat/completions", json=chat).raise_for_status()
        tokenize = client.post("/tokenize", json=_RECORD_TOKENIZE).raise_for_status()
        metrics = client.get("/metrics").raise_for_status()
    headers = {
        "chat_completion_streamed": _exchange(streamed, streamed_body),
        "chat_completion": _exchange(plain, chat),
        "metrics": _exchange(metrics),
    }
    return [
        _write_json(out_dir / "models.json", models.json()),
        _write_text(out_dir / "chat_stream.txt", streamed.text),
        _write_json(
            out_dir / "tokenize.json", {"request": _RECORD_TOKENIZE, "response": tokenize.json()}
        ),
        _write_json(out_dir / "headers.json", headers),
        _write_text(out_dir / "metrics.txt", metrics.text),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Start llama-server on the default GGUF and record its answers (see the module doc)."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.llama_server")
    parser.add_argument("--record", type=Path, required=True, metavar="DIR")
    args = parser.parse_args(argv)
    binary = llama_server_binary()
    if binary is None:
        parser.error(f"set {LLAMA_SERVER_ENV} (scripts/build_llama_server.sh prints the path)")
    with (
        tempfile.TemporaryDirectory(prefix="llama-server-") as log_dir,
        running_llama_server(
            binary=binary,
            gguf=default_gguf_path(),
            port=free_port(),
            log_path=Path(log_dir) / "llama-server.log",
        ) as server,
    ):
        for path in record_fixtures(server.url, args.record):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
