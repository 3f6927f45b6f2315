"""llama.cpp's ``llama-server`` as ``bench compare``'s peer: find the cached build, start, stop.

``scripts/build_llama_server.sh`` builds the binary once per machine into
``~/.cache/tokenbooth/peers/llama.cpp-VERSION/``; this module only runs it (never builds), on
loopback, in its own process group, and stops the group. tests/support/llama_server.py does the
same for the integration tests, which may not be imported from a package.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from service.errors import TokenboothError
from service.launch import LOOPBACK, die_with_parent, free_port

__all__ = [
    "LLAMA_SERVER_ENV",
    "LlamaServer",
    "LlamaServerError",
    "find_llama_server",
    "slot_context",
    "start_llama_server",
]

LLAMA_SERVER_ENV: Final = "TOKENBOOTH_LLAMA_SERVER"
"""The variable naming the ``llama-server`` binary (scripts/test.sh exports it too)."""
_BUILD_SCRIPT: Final = "scripts/build_llama_server.sh"
_READY_PATH: Final = "/health"  # 503 while the model loads, 200 once it serves
# The chat template's default system prompt and role markers (about 30 tokens for SmolLM2),
# with room for a tokenizer that splits the prompt's words finer than expected.
_TEMPLATE_TOKENS: Final = 64
_TOKENS_PER_WORD: Final = 2
_CONTEXT_QUANTUM: Final = 256
# llama.cpp reads every option from a LLAMA_ARG_* variable too: the shell must not
# reconfigure the peer behind the benchmark's back.
_OPTION_ENV_PREFIX: Final = "LLAMA_ARG_"
_STOP_TIMEOUT_S: Final = 10.0


class LlamaServerError(TokenboothError):
    """No llama-server binary, or it exited, or it never answered ready."""


def find_llama_server(environ: Mapping[str, str] | None = None) -> Path:
    """The binary ``TOKENBOOTH_LLAMA_SERVER`` names, else the newest cached build.

    Raises:
        LlamaServerError: neither exists; the message names the build script.
    """
    env = os.environ if environ is None else environ
    named = env.get(LLAMA_SERVER_ENV, "")
    if named:
        path = Path(named).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise LlamaServerError(f"{LLAMA_SERVER_ENV}={named} is not an executable file")
    cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokenbooth" / "peers"
    builds = sorted(
        (p for p in cache.glob("llama.cpp-*/llama-server") if os.access(p, os.X_OK)),
        key=lambda p: p.stat().st_mtime,
    )
    if not builds:
        raise LlamaServerError(
            f"no llama-server under {cache}: build it once with `bash {_BUILD_SCRIPT}` "
            f"(about 4 minutes on 2 cores) or set {LLAMA_SERVER_ENV}"
        )
    return builds[-1]


def slot_context(prompt_words: int, max_tokens: int) -> int:
    """Context per slot for a prompt of ``prompt_words`` words and ``max_tokens`` output tokens.

    With an explicit ``-np`` llama-server splits ``-c`` evenly between its slots, so ``-c`` is
    this times the slots.
    """
    need = _TEMPLATE_TOKENS + _TOKENS_PER_WORD * prompt_words + max_tokens
    return -(-need // _CONTEXT_QUANTUM) * _CONTEXT_QUANTUM


@dataclass(frozen=True)
class LlamaServer:
    """One running llama-server process and where its output goes."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, to say why it failed."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the server's process group, then SIGKILL it if it outlives a grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=_STOP_TIMEOUT_S)
                return
            except subprocess.TimeoutExpired:
                continue


def _wait_ready(server: LlamaServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=2, trust_env=False) as client:
        while time.monotonic() < deadline:
            code = server.process.poll()
            if code is not None:
                raise LlamaServerError(
                    f"llama-server exited with code {code} before becoming ready; last lines "
                    f"of {server.log_path}:\n{server.log_tail()}"
                )
            try:
                response = client.get(server.url + _READY_PATH)
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            else:
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            time.sleep(0.1)
    raise LlamaServerError(
        f"llama-server at {server.url} not ready after {timeout_s:.0f} s ({last}); last lines "
        f"of {server.log_path}:\n{server.log_tail()}"
    )


def start_llama_server(
    binary: Path,
    gguf: Path,
    log_path: Path,
    *,
    parallel: int,
    threads: int,
    ctx: int,
    port: int | None = None,
    ready_timeout_s: float = 120.0,
) -> LlamaServer:
    """Start ``binary`` on loopback ``port`` (default: a free one) serving ``gguf``; return once
    it is ready, in its own process group, dying with this process.

    ``parallel`` slots (``-np``), ``threads`` CPU threads (``-t``), ``ctx`` total context
    (``-c``), ``--metrics`` on so the benchmark can wait until it is idle.

    Raises:
        LlamaServerError: it exited, or was not ready in time (it is stopped then).
    """
    argv = [
        str(binary),
        "--model", str(gguf),
        "--host", LOOPBACK,
        "--port", str(free_port() if port is None else port),
        "--parallel", str(parallel),
        "--threads", str(threads),
        "--ctx-size", str(ctx),
        "--metrics",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OPTION_ENV_PREFIX)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    server = LlamaServer(f"http://{LOOPBACK}:{argv[argv.index('--port') + 1]}", process, log_path)
    try:
        _wait_ready(server, ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server
