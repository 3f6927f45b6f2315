"""A server that costs nothing: Debian's nginx returning a canned OpenAI SSE body on loopback.

What the harness measures against it is its own overhead: nginx sends the whole response in
one write, so the true TTFT and inter-token gaps are ~0 and every reported millisecond is the
load generator's (plus loopback RTT). Used by ``tokenbooth bench loadgen`` and the sweep's
calibration gate (:mod:`loadgen.calibration`). nginx runs as a non-daemon child with one worker
process, so on a 2-core machine the harness keeps the other core.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

__all__ = ["CANNED_MODEL", "CannedServer", "canned_nginx", "nginx_binary", "sse_body"]

CANNED_MODEL: Final = "canned"
_NGINX_PATHS: Final = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")


def nginx_binary() -> str | None:
    """Path of the nginx binary, or None when it is not installed (``apt-get install nginx``)."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in _NGINX_PATHS if Path(p).exists()), None)


def sse_body(chunks: int, *, chat: bool) -> bytes:
    """A complete OpenAI stream: ``chunks`` one-token content chunks, a usage chunk, [DONE]."""
    enc = msgspec.json.Encoder()
    obj = "chat.completion.chunk" if chat else "text_completion"
    parts = []
    for i in range(chunks):
        choice: dict[str, object] = (
            {"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None}
            if chat
            else {"index": 0, "text": f" w{i}", "finish_reason": None}
        )
        if i == chunks - 1:
            choice["finish_reason"] = "length"
        chunk = {"id": "c", "object": obj, "created": 0, "model": CANNED_MODEL, "choices": [choice]}
        parts.append(b"data: " + enc.encode(chunk) + b"\n\n")
    usage = {"prompt_tokens": 16, "completion_tokens": chunks, "total_tokens": 16 + chunks}
    tail = {"id": "c", "object": obj, "created": 0, "model": CANNED_MODEL, "choices": []}
    parts.append(b"data: " + enc.encode(tail | {"usage": usage}) + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(port: int, chunks: int, prefix: Path) -> str:
    models = msgspec.json.encode(
        {"object": "list", "data": [{"id": CANNED_MODEL, "object": "model", "owned_by": "nginx"}]}
    )
    www = prefix / "www"
    www.mkdir()
    (www / "chat.sse").write_bytes(sse_body(chunks, chat=True))
    (www / "completions.sse").write_bytes(sse_body(chunks, chat=False))
    (www / "models.json").write_bytes(models)
    return f"""
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {prefix}/www;
        # POST to a static file is 405; error_page redirects internally as a GET (nginx docs,
        # error_page), so the canned body is served from a file with sendfile, no size limit.
        location = /v1/chat/completions {{ error_page 405 =200 /chat.sse; return 405; }}
        location = /v1/completions {{ error_page 405 =200 /completions.sse; return 405; }}
        location ~ [.]sse$ {{ internal; default_type text/event-stream; }}
        location = /health {{ default_type text/plain; return 200 "ok"; }}
        location = /v1/models {{ default_type application/json; try_files /models.json =404; }}
    }}
}}
"""


@dataclass(frozen=True)
class CannedServer:
    """A running canned server: its base URL, chunks per response, and nginx's process id."""

    url: str
    chunks: int
    pid: int


@contextmanager
def canned_nginx(chunks: int, timeout_s: float = 10.0) -> Iterator[CannedServer]:
    """Run nginx on a free loopback port for the block, each response ``chunks`` tokens long.

    Raises:
        FileNotFoundError: nginx is not installed.
        RuntimeError: nginx did not start listening within ``timeout_s``.
    """
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx not found: apt-get install nginx")
    with tempfile.TemporaryDirectory(prefix="tb-nginx-") as d:
        prefix = Path(d)
        prefix.chmod(0o755)  # nginx's worker drops root for "nobody" and must read the files
        port = _free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(_config(port, chunks, prefix))
        proc = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"nginx exited with {proc.returncode}: {err.strip()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        msg = f"nginx did not listen on {port} in {timeout_s} s"
                        raise RuntimeError(msg) from exc
                    time.sleep(0.05)
            yield CannedServer(f"http://127.0.0.1:{port}", chunks, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
