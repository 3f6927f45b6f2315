"""Start ``tokenbooth serve`` replica processes from :class:`ServiceSettings`, wait until ready.

The one way a harness, a benchmark or a test starts a replica: the child's environment is built
from a settings object (field names and the settings' own env prefix, nothing spelled by hand),
so what the parent configured is exactly what the child reads back. Replicas die with their
parent (``PR_SET_PDEATHSIG``), so even a SIGKILLed harness leaves no process behind, and are
stopped with SIGTERM (graceful drain) then SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from pydantic import SecretStr

from service.errors import TokenboothError
from service.settings import ServiceSettings

__all__ = [
    "LOOPBACK",
    "Replica",
    "ReplicaError",
    "ReplicaExitedError",
    "ReplicaNotReadyError",
    "die_with_parent",
    "env_name",
    "explicit_settings",
    "free_port",
    "replica_env",
    "start_replica",
    "stop_replicas",
    "wait_ready",
]

LOOPBACK: Final = "127.0.0.1"
_READY_PATH: Final = "/health/ready"  # the readiness route of service.routes.ops
_LOG_TAIL_LINES: Final = 20
_LOG_TAIL_CHARS: Final = 2000


class ReplicaError(TokenboothError):
    """A replica process could not be brought up."""


class ReplicaExitedError(ReplicaError):
    """The replica process exited before every replica became ready."""

    def __init__(self, detail: str, returncode: int) -> None:
        super().__init__(detail)
        self.returncode = returncode


class ReplicaNotReadyError(ReplicaError):
    """Time ran out before every replica answered ready.

    ``answered`` tells a replica that is up but not ready (its readiness endpoint answered,
    with something other than 200) from one that never accepted a connection.
    """

    def __init__(self, detail: str, *, answered: bool) -> None:
        super().__init__(detail)
        self.answered = answered


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """``preexec_fn`` that has the kernel SIGTERM the child when its parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def env_name(field: str) -> str:
    """The environment variable :class:`ServiceSettings` reads ``field`` from."""
    config = ServiceSettings.model_config
    name = config.get("env_prefix", "") + field
    return name if config.get("case_sensitive", False) else name.upper()


def _is_settings_var(key: str) -> bool:
    config = ServiceSettings.model_config
    prefix = config.get("env_prefix", "")
    if config.get("case_sensitive", False):
        return key.startswith(prefix)
    return key.upper().startswith(prefix.upper())


def _env_value(value: Any) -> str:
    """``value`` as pydantic-settings parses it back from the environment."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | Path):
        return str(value)  # str(float) is the shortest repr that reads back to the same float
    return json.dumps(value)  # complex fields are read from the environment as JSON


def replica_env(
    settings: ServiceSettings, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a child that reads ``settings`` back with ``ServiceSettings()``.

    ``environ`` (default: this process's) without any settings variable of its own, so the
    parent's shell cannot add to or override ``settings``, plus one variable per field.

    Raises:
        ValueError: a field is ``None`` where its default is not; the environment has no way
            to say ``None``.
    """
    base = os.environ if environ is None else environ
    env = {k: v for k, v in base.items() if not _is_settings_var(k)}
    for name, field in ServiceSettings.model_fields.items():
        value = getattr(settings, name)
        if value is None:
            if field.get_default(call_default_factory=True) is not None:
                raise ValueError(f"{name}=None cannot be passed to a replica's environment")
            continue
        env[env_name(name)] = _env_value(value)
    return env


def explicit_settings(**values: Any) -> ServiceSettings:
    """Settings from ``values`` and the field defaults alone, not this process's environment.

    A harness's own shell must not configure the replicas it starts: every field is passed
    explicitly, so pydantic-settings has nothing left to read from this process's environment.
    """
    defaults = {
        name: field.get_default(call_default_factory=True)
        for name, field in ServiceSettings.model_fields.items()
        if not field.is_required()
    }
    return ServiceSettings(**(defaults | values))


@dataclass(frozen=True)
class Replica:
    """One ``tokenbooth serve`` process, where it answers and where its output goes."""

    base_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None = None
    # Sent on readiness probes when the replica guards its health endpoints with it.
    probe_api_key: str | None = dataclasses.field(default=None, repr=False)

    def exited(self) -> str | None:
        """How the process ended, or None while it runs."""
        code = self.proc.poll()
        return None if code is None else f"replica {self.base_url} exited with code {code}"

    def log_tail(self) -> str:
        """The last lines of the log file ("" without one), to say why a replica failed."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(max(0, self.log_path.stat().st_size - 4 * _LOG_TAIL_CHARS))
            text = f.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])[-_LOG_TAIL_CHARS:]


def start_replica(
    settings: ServiceSettings,
    *,
    log_path: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Replica:
    """Start ``tokenbooth serve`` on ``settings.host:settings.port``, not waiting for readiness.

    Args:
        settings: everything the replica runs with, passed through its environment.
        log_path: file its stdout and stderr are appended to; without one stdout is discarded
            and stderr is this process's, so start-up errors show where the caller runs.
        extra_env: other variables for the child (e.g. ``OMP_NUM_THREADS``).
    """
    env = replica_env(settings)
    env.update(extra_env or {})
    # --host/--port on the command line as well: they name the replica in `ps`.
    argv = [sys.executable, "-m", "service.cli", "serve"]
    argv += ["--host", settings.host, "--port", str(settings.port)]
    if log_path is None:
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # The child holds its own descriptor; ours can close as soon as it is started.
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
    key = settings.effective_api_key
    probe_key = (
        key.get_secret_value() if key is not None and settings.protect_health_endpoints else None
    )
    return Replica(f"http://{settings.host}:{settings.port}", proc, log_path, probe_key)


def _exited_error(replica: Replica) -> ReplicaExitedError:
    code = replica.proc.returncode
    detail = f"{replica.exited()} before becoming ready"
    tail = replica.log_tail()
    if tail:
        detail += f"; last lines of {replica.log_path}:\n{tail}"
    return ReplicaExitedError(detail, code)


def wait_ready(*replicas: Replica, timeout_s: float = 300.0) -> None:
    """Block until every replica's ``/health/ready`` answers 200.

    Fails as soon as any of them exits (with its exit code and the tail of its log), rather
    than waiting out the timeout for a process that is gone.

    Raises:
        ReplicaExitedError: a replica exited.
        ReplicaNotReadyError: ``timeout_s`` passed first.
    """
    deadline = time.monotonic() + timeout_s
    pending = list(replicas)
    last_error = ""
    answered = False
    # No proxy from the environment: replicas are on loopback.
    with httpx.Client(timeout=2, trust_env=False) as client:
        while True:
            for replica in replicas:
                if replica.proc.poll() is not None:
                    raise _exited_error(replica)
            for replica in list(pending):
                url = replica.base_url + _READY_PATH
                key = replica.probe_api_key
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                try:
                    r = client.get(url, headers=headers)
                except httpx.HTTPError as exc:
                    last_error, answered = f"{replica.base_url}: {type(exc).__name__}", False
                    continue
                if r.status_code == 200:
                    pending.remove(replica)
                else:
                    last_error, answered = f"{url} -> {r.status_code} {r.text[:200]}", True
            if not pending:
                return
            if time.monotonic() >= deadline:
                urls = ", ".join(r.base_url for r in pending)
                raise ReplicaNotReadyError(
                    f"not ready after {timeout_s:g} s: {urls} ({last_error})", answered=answered
                )
            time.sleep(0.1)


def stop_replicas(*replicas: Replica, grace_s: float = 10.0) -> None:
    """SIGTERM every replica at once, give them ``grace_s`` to drain, SIGKILL what is left."""
    for replica in replicas:
        if replica.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                replica.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for replica in replicas:
        try:
            replica.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            replica.proc.kill()
            replica.proc.wait()
