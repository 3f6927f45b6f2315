"""Debian's haproxy run with the compose stack's own config, in front of loopback replicas.

The test starts ``haproxy`` in the foreground on free loopback ports with
``deploy/compose/haproxy.cfg``, the file compose mounts; only the addresses differ, passed
through the environment variables that file expands. Server state comes from the stats
frontend's CSV, the page an operator reads.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from service.launch import LOOPBACK, die_with_parent, free_port

__all__ = [
    "BACKEND",
    "HAPROXY_CFG",
    "HAProxy",
    "ServerStat",
    "haproxy_binary",
    "running_haproxy",
    "server_stats",
]

HAPROXY_CFG: Final = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "haproxy.cfg"
BACKEND: Final = "tokenbooth"
"""The backend (and frontend) name in ``haproxy.cfg``."""
UPSTREAM_ENV: Final = ("TOKENBOOTH_UPSTREAM_1", "TOKENBOOTH_UPSTREAM_2")
"""The variables ``haproxy.cfg`` reads its server addresses from, in server order."""
_STOP_GRACE_S: Final = 5.0


def haproxy_binary() -> str | None:
    """Path of the ``haproxy`` binary (Debian package ``haproxy``), or None."""
    # /usr/sbin is not on every user's PATH; the Debian package installs the binary there.
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


@dataclass(frozen=True)
class ServerStat:
    """One server line of the stats CSV: its state and how many sessions it has taken."""

    name: str
    status: str  # "UP", "UP 1/2" (going down), "DOWN", "DOWN 1/2" (coming up), "MAINT", ...
    sessions_total: int

    @property
    def up(self) -> bool:
        """In the rotation (a server is removed only once it is DOWN)."""
        return self.status.startswith("UP")


@dataclass(frozen=True)
class HAProxy:
    """A running haproxy: where clients and the stats page reach it, its process and log."""

    url: str
    stats_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path


def server_stats(stats_url: str, client: httpx.Client) -> dict[str, ServerStat]:
    """The servers of the tokenbooth backend, by name, from the stats page's CSV export."""
    r = client.get(stats_url + ";csv")
    r.raise_for_status()
    rows = csv.DictReader(io.StringIO(r.text.removeprefix("# ")))
    return {
        row["svname"]: ServerStat(row["svname"], row["status"], int(row["stot"] or 0))
        for row in rows
        if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
    }


def _wait_serving(proxy: HAProxy, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2, trust_env=False) as client:
        while True:
            if proxy.proc.poll() is not None:
                raise RuntimeError(
                    f"haproxy exited with {proxy.proc.returncode}: {proxy.log_path.read_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if server_stats(proxy.stats_url, client):
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"haproxy stats not answering after {timeout_s:g} s")
            time.sleep(0.05)


@contextlib.contextmanager
def running_haproxy(
    binary: str, upstreams: Sequence[str], log_path: Path, *, timeout_s: float = 10.0
) -> Iterator[HAProxy]:
    """Run ``haproxy -db -f haproxy.cfg`` on free loopback ports in front of ``upstreams``.

    ``upstreams`` are ``host:port`` of the config's servers, in order. Stopped on exit with
    SIGTERM (immediate stop of a foreground haproxy), then SIGKILL.
    """
    if len(upstreams) != len(UPSTREAM_ENV):
        raise ValueError(f"haproxy.cfg has {len(UPSTREAM_ENV)} servers, got {len(upstreams)}")
    port, stats_port = free_port(), free_port()
    env = {
        "PATH": "/usr/sbin:/usr/bin:/bin",
        "TOKENBOOTH_PROXY_BIND": f"{LOOPBACK}:{port}",
        "TOKENBOOTH_PROXY_STATS_BIND": f"{LOOPBACK}:{stats_port}",
        **dict(zip(UPSTREAM_ENV, upstreams, strict=True)),
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # -db: stay in the foreground, no daemon, so the process is ours to stop.
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(HAPROXY_CFG)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    proxy = HAProxy(
        f"http://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{stats_port}/stats", proc, log_path
    )
    try:
        _wait_serving(proxy, timeout_s)
        yield proxy
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
