"""Targets: local replicas the harness starts and stops, or remote URLs plus a shell hook.

Local replicas are ``tokenbooth serve`` processes on free loopback ports. They are started
with ``PR_SET_PDEATHSIG`` so that even a SIGKILLed harness leaves no process behind, and
stopped with SIGTERM (graceful drain) then SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import requests

from loadgen.spec import ServerConfig, TargetSpec
from service.errors import TokenboothError

__all__ = [
    "LocalReplicas",
    "RemoteTarget",
    "TargetError",
    "free_port",
    "wait_ready",
]


class TargetError(TokenboothError):
    """A target could not be reached, configured, or kept alive.

    ``status`` is the point status to record (``target_unreachable``, ``replica_not_ready``,
    ``replica_died``, ``hook_failed``).
    """

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_ready(
    urls: list[str],
    timeout_s: float,
    *,
    alive: Callable[[], str | None] | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Wait until every URL's ``/health/ready`` answers 200; raise TargetError otherwise."""
    deadline = time.monotonic() + timeout_s
    pending = list(urls)
    last_error = ""
    while pending:
        if alive is not None:
            dead = alive()
            if dead:
                raise TargetError("replica_died", dead)
        for url in list(pending):
            try:
                r = requests.get(url + "/health/ready", timeout=2, headers=headers)
                if r.status_code == 200:
                    pending.remove(url)
                else:
                    last_error = f"{url}/health/ready -> {r.status_code} {r.text[:200]}"
            except requests.RequestException as exc:
                last_error = f"{url}: {type(exc).__name__}"
        if not pending:
            return
        if time.monotonic() >= deadline:
            status = "replica_not_ready" if "->" in last_error else "target_unreachable"
            raise TargetError(
                status, f"not ready after {timeout_s:g} s: {', '.join(pending)} ({last_error})"
            )
        time.sleep(0.1)


class LocalReplicas:
    """N ``tokenbooth serve`` processes for one server configuration."""

    def __init__(
        self,
        config: ServerConfig,
        target: TargetSpec,
        *,
        model_dir: Path | None,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        request_timeout_s: float = 120.0,
    ) -> None:
        self.config = config
        self.target = target
        self.model_dir = model_dir
        self.log_dir = log_dir
        self.extra_env = dict(extra_env or {})
        self.request_timeout_s = request_timeout_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self._logs: list[IO[bytes]] = []

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENBOOTH_")}
        c = self.config
        env.update(
            {
                "TOKENBOOTH_ENGINE": self.target.engine,
                "TOKENBOOTH_MAX_BATCH_SIZE": str(c.max_batch_size),
                "TOKENBOOTH_MAX_BATCH_DELAY_MS": str(c.max_batch_delay_ms),
                "TOKENBOOTH_BATCH_WORKERS": str(c.batch_workers),
                "TOKENBOOTH_INTRA_THREADS": str(c.intra_threads),
                "TOKENBOOTH_QUANTIZATION": c.quantization,
                "TOKENBOOTH_REQUEST_TIMEOUT_S": str(self.request_timeout_s),
                "TOKENBOOTH_MAX_TOKENS_CAP": "4096",
                "TOKENBOOTH_MAX_QUEUE_SIZE": "4096",
                "TOKENBOOTH_DRAIN_TIMEOUT_S": "5",
                # Each replica gets its own CPU threads; OpenMP must not oversubscribe.
                "OMP_NUM_THREADS": str(max(1, c.intra_threads)),
            }
        )
        if self.model_dir is not None:
            env["TOKENBOOTH_MODEL"] = str(self.model_dir)
        for k, v in self.extra_env.items():
            env[f"TOKENBOOTH_{k.upper()}"] = v
        return env

    def start(self) -> list[str]:
        """Start the replicas (not yet waiting for readiness); return their base URLs."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self._env()
        for i in range(self.config.replicas):
            port = free_port()
            log = (self.log_dir / f"{self.config.config_id}-replica{i}.log").open("ab")
            self._logs.append(log)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "service.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
            self.procs.append(proc)
            self.urls.append(f"http://127.0.0.1:{port}")
        return list(self.urls)

    def dead(self) -> str | None:
        """Description of the first replica that exited, or None when all run."""
        for url, proc in zip(self.urls, self.procs, strict=True):
            code = proc.poll()
            if code is not None:
                return f"replica {url} exited with code {code}"
        return None

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every replica is ready (TargetError if one dies or times out)."""
        wait_ready(self.urls, timeout_s, alive=self.dead)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every replica, wait for the drain, SIGKILL what is left."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()
        self.procs.clear()
        self._logs.clear()

    @contextlib.contextmanager
    def running(self, ready_timeout_s: float) -> Iterator[list[str]]:
        """Start, wait ready, yield URLs, always stop."""
        try:
            urls = self.start()
            self.wait_ready(ready_timeout_s)
            yield urls
        finally:
            self.stop()


class RemoteTarget:
    """Base URLs of a deployment, optionally reconfigured by a shell hook per configuration."""

    def __init__(self, target: TargetSpec) -> None:
        self.target = target
        self.urls = list(target.urls)

    def headers(self) -> dict[str, str]:
        """Authorization header when the spec names an env var with the key."""
        if self.target.api_key_env and os.environ.get(self.target.api_key_env):
            return {"Authorization": f"Bearer {os.environ[self.target.api_key_env]}"}
        return {}

    def apply(self, config: ServerConfig, timeout_s: float = 600.0) -> None:
        """Run the hook for ``config`` (if any) and wait for every URL to be ready."""
        if self.target.hook:
            cmd = self.target.hook.format(
                replicas=config.replicas,
                max_batch_size=config.max_batch_size,
                max_batch_delay_ms=config.max_batch_delay_ms,
                batch_workers=config.batch_workers,
                intra_threads=config.intra_threads,
                quantization=config.quantization,
            )
            # The hook is the user's own shell command from their spec (e.g. kubectl scale); it
            # runs in its own process group so a timeout ends everything it started.
            proc = subprocess.Popen(  # noqa: S602
                cmd,
                shell=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            try:
                _, stderr = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise TargetError(
                    "hook_failed", f"hook did not finish within {timeout_s:g} s: {cmd}"
                ) from None
            if proc.returncode != 0:
                raise TargetError(
                    "hook_failed",
                    f"hook exited {proc.returncode}: {cmd}: {stderr.strip()[-500:]}",
                )
        wait_ready(self.urls, self.target.ready_timeout_s, headers=self.headers())
