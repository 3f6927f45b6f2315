"""Targets: local replicas the harness starts and stops, or remote URLs plus a shell hook.

Local replicas are ``tokenbooth serve`` processes on free loopback ports, started through
:mod:`service.launch` with settings built from the sweep's server configuration (so they die
with the harness and drain on stop). Remote targets are polled for readiness here: the spec's
``ready_path``, else the named server kind's paths, else ``/health/ready``, ``/health`` and
``/v1/models`` in turn (tokenbooth's, most servers', and the one every OpenAI-compatible server
has).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import requests
from pydantic import ValidationError

from loadgen.results import PointStatus
from loadgen.scalehook import warn_if_autoscaled
from loadgen.servers import AUTO, DEFAULT_READY_PATHS, adapter_for
from loadgen.spec import ServerConfig, TargetSpec
from service.errors import TokenboothError
from service.launch import (
    LOOPBACK,
    Replica,
    ReplicaExitedError,
    ReplicaNotReadyError,
    explicit_settings,
    free_port,
    start_replica,
    stop_replicas,
    wait_ready,
)
from service.settings import ServiceSettings

__all__ = [
    "LocalReplicas",
    "RemoteTarget",
    "TargetError",
]

logger = logging.getLogger("tokenbooth.loadgen")


class TargetError(TokenboothError):
    """A target could not be reached, configured, or kept alive.

    ``status`` is the point status to record (``target_unreachable``, ``replica_not_ready``,
    ``replica_died``, ``hook_failed``).
    """

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status


# Statuses that mean "no such endpoint here": the next readiness path may be the server's own.
# Any other answer (503 while loading, 401) is the server speaking for itself: not ready yet.
_NO_SUCH_PATH: Final = frozenset({404, 405, 501})


def _ready_path(url: str, paths: tuple[str, ...], headers: dict[str, str]) -> tuple[str, str]:
    """``(path that answered 200, "")``, or ``("", why not)`` with ``->`` when it answered."""
    misses = []
    for path in paths:
        try:
            r = requests.get(url + path, timeout=2, headers=headers)
        except requests.RequestException as exc:
            return "", f"{url}: {type(exc).__name__}"
        if r.status_code == 200:
            return path, ""
        answer = f"{url}{path} -> {r.status_code} {r.text[:200]}"
        if r.status_code not in _NO_SUCH_PATH:
            return "", answer
        misses.append(answer)
    return "", f"no readiness path answered 200 ({'; '.join(misses)})"


def _wait_urls_ready(
    urls: list[str], timeout_s: float, headers: dict[str, str], paths: tuple[str, ...]
) -> dict[str, str]:
    """Wait until every URL answers 200 on one of ``paths``; raise TargetError otherwise.

    Paths are tried in order on each URL; one that does not exist there (404, 405, 501) passes
    to the next, while any other answer (503 while loading) means not ready yet.

    Returns:
        The path each URL became ready on.
    """
    deadline = time.monotonic() + timeout_s
    pending = list(urls)
    ready: dict[str, str] = {}
    last_error = ""
    while pending:
        for url in list(pending):
            path, why = _ready_path(url, paths, headers)
            if path:
                ready[url] = path
                pending.remove(url)
            else:
                last_error = why
        if not pending:
            return ready
        if time.monotonic() >= deadline:
            status = (
                PointStatus.REPLICA_NOT_READY
                if "->" in last_error
                else PointStatus.TARGET_UNREACHABLE
            )
            raise TargetError(
                status, f"not ready after {timeout_s:g} s: {', '.join(pending)} ({last_error})"
            )
        time.sleep(0.1)
    return ready


class LocalReplicas:
    """N ``tokenbooth serve`` processes for one server configuration.

    ``extra_env`` holds the spec's ``[server] env``: further settings by field name, as strings.
    """

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
        self.replicas: list[Replica] = []

    @property
    def urls(self) -> list[str]:
        """Base URLs of the started replicas."""
        return [r.base_url for r in self.replicas]

    def settings(self) -> ServiceSettings:
        """What every replica of this configuration runs with, its port aside.

        Raises:
            ValidationError: the spec's ``[server] env`` holds a value the service rejects.
        """
        c = self.config
        values: dict[str, Any] = {
            "engine": self.target.engine,
            "max_batch_size": c.max_batch_size,
            "max_batch_delay_ms": c.max_batch_delay_ms,
            "batch_workers": c.batch_workers,
            "spare_workers": c.spare_workers,
            "intra_threads": c.intra_threads,
            "quantization": c.quantization,
            "batch_policy": c.batch_policy,
            "request_timeout_s": self.request_timeout_s,
            # The harness decides load and lengths; the replica must not be what limits them.
            "max_tokens_cap": 4096,
            "max_queue_size": 4096,
            "drain_timeout_s": 5.0,
        }
        if self.model_dir is not None:
            values["model"] = self.model_dir
        values.update({k.lower(): v for k, v in self.extra_env.items()})
        values["host"] = LOOPBACK
        return explicit_settings(**values)

    def start(self) -> list[str]:
        """Start the replicas (not yet waiting for readiness); return their base URLs."""
        try:
            settings = self.settings()
        except ValidationError as exc:
            raise TargetError(
                PointStatus.REPLICA_NOT_READY, f"invalid replica settings: {exc}"
            ) from exc
        # Each replica gets its own CPU threads; OpenMP must not oversubscribe.
        omp = {"OMP_NUM_THREADS": str(max(1, self.config.intra_threads))}
        for i in range(self.config.replicas):
            self.replicas.append(
                start_replica(
                    settings.model_copy(update={"port": free_port()}),
                    log_path=self.log_dir / f"{self.config.config_id}-replica{i}.log",
                    extra_env=omp,
                )
            )
        return self.urls

    def dead(self) -> str | None:
        """Description of the first replica that exited, or None when all run."""
        for replica in self.replicas:
            exited = replica.exited()
            if exited:
                return exited
        return None

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every replica is ready (TargetError if one dies or times out)."""
        try:
            wait_ready(*self.replicas, timeout_s=timeout_s)
        except ReplicaExitedError as exc:
            raise TargetError(PointStatus.REPLICA_DIED, exc.detail) from exc
        except ReplicaNotReadyError as exc:
            status = (
                PointStatus.REPLICA_NOT_READY if exc.answered else PointStatus.TARGET_UNREACHABLE
            )
            raise TargetError(status, exc.detail) from exc

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every replica, wait for the drain, SIGKILL what is left."""
        stop_replicas(*self.replicas, grace_s=grace_s)
        self.replicas.clear()

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
        self.ready_via: dict[str, str] = {}
        self._autoscalers_checked = False  # a kubectl scale hook vs an HPA: checked once

    @property
    def ready_paths(self) -> tuple[str, ...]:
        """Readiness paths: the spec's ``ready_path``, else the named kind's, else the defaults."""
        if self.target.ready_path:
            return (self.target.ready_path,)
        if self.target.server != AUTO:
            return adapter_for(self.target.server).ready_paths
        return DEFAULT_READY_PATHS

    def headers(self) -> dict[str, str]:
        """Authorization header when the spec names an env var with the key."""
        if self.target.api_key_env and os.environ.get(self.target.api_key_env):
            return {"Authorization": f"Bearer {os.environ[self.target.api_key_env]}"}
        return {}

    def apply(self, config: ServerConfig, timeout_s: float = 600.0) -> None:
        """Run the hook for ``config`` (if any) and wait for every URL to be ready."""
        if self.target.hook and not self._autoscalers_checked:
            self._autoscalers_checked = True
            warn_if_autoscaled(self.target.hook)
        if self.target.hook:
            cmd = self.target.hook.format(
                replicas=config.replicas,
                max_batch_size=config.max_batch_size,
                max_batch_delay_ms=config.max_batch_delay_ms,
                batch_workers=config.batch_workers,
                spare_workers=config.spare_workers,
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
                    PointStatus.HOOK_FAILED, f"hook did not finish within {timeout_s:g} s: {cmd}"
                ) from None
            if proc.returncode != 0:
                raise TargetError(
                    PointStatus.HOOK_FAILED,
                    f"hook exited {proc.returncode}: {cmd}: {stderr.strip()[-500:]}",
                )
        self.ready_via = _wait_urls_ready(
            self.urls, self.target.ready_timeout_s, self.headers(), self.ready_paths
        )
        for url, path in self.ready_via.items():
            logger.info("%s ready (%s answered 200)", url, path)
