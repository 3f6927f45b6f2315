"""Shared fixtures: apps on the fake engine, live uvicorn servers on loopback, the real model."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import uvicorn
from litestar import Litestar
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.launch import free_port
from service.settings import ServiceSettings
from telemetry.logging import configure_logging
from telemetry.tracing import configure_tracing, shutdown_tracing


def missing_tool(message: str) -> NoReturn:
    """A tool the suite needs is absent: skip on a developer's machine, fail in CI.

    ``scripts/test.sh`` installs every such tool, so in CI (``CI`` set) a missing one is a
    broken install step, never a reason to pass with less tested.
    """
    if os.environ.get("CI"):
        pytest.fail(f"required tool missing in CI: {message}")
    pytest.skip(message)


def fake_settings(**overrides: Any) -> ServiceSettings:
    """Settings for the fake engine with fast, known latencies."""
    base: dict[str, Any] = {
        "engine": "fake",
        "fake_ttft_ms": 20.0,
        "fake_itl_ms": 2.0,
        "max_batch_delay_ms": 2.0,
        "warmup": False,
    }
    base.update(overrides)
    return ServiceSettings(**base)


async def wait_ready(client: Any, limit_s: float = 30.0) -> None:
    """Poll /health/ready until 200 (works with Litestar's AsyncTestClient and httpx)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        r = await client.get("/health/ready")
        if r.status_code == 200:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("service never became ready")


class LiveServer:
    """A uvicorn server running an app in a background thread on a free loopback port."""

    def __init__(self, app: Litestar) -> None:
        self.app = app
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, ready_timeout: float = 120.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base_url + "/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError("live server never became ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ambient OTEL_* settings of the host must not change what a test exports."""
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """An in-memory span exporter (spans are exported as they end)."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A TracerProvider exporting to ``exporter``, shut down after the test."""
    provider = configure_tracing(exporter=exporter)
    yield provider
    shutdown_tracing(provider)


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    """The service's JSON logs written to a StringIO; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("INFO", stream=buffer)
    yield buffer
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh Prometheus registry."""
    return CollectorRegistry()


@pytest.fixture
def live_server() -> Iterator[Callable[[Litestar], LiveServer]]:
    """Factory that starts apps on live loopback servers and stops them after the test."""
    servers: list[LiveServer] = []

    def start(app: Litestar) -> LiveServer:
        srv = LiveServer(app).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture(scope="session")
def real_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the real model's builds live: ``$TOKENBOOTH_TEST_MODELS_DIR`` or one per session."""
    cache = os.environ.get("TOKENBOOTH_TEST_MODELS_DIR")
    return Path(cache) if cache else tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def real_model_dir(real_models_dir: Path) -> Path:
    """The default SmolLM2 model, converted to CTranslate2 INT8 (cached across runs if possible)."""
    from service.models import build_model

    return build_model(None, quantization="int8", models_dir=real_models_dir)


@pytest.fixture(scope="session")
def real_float32_dir(real_models_dir: Path) -> Path:
    """The default SmolLM2 model in float32: the reference int8 is measured against."""
    from service.models import build_model

    return build_model(None, quantization="float32", models_dir=real_models_dir)


@pytest.fixture
def make_app(registry: CollectorRegistry) -> Callable[..., Litestar]:
    """Build an app on the fake engine with a fresh registry: ``make_app(**settings)``."""

    def make(**overrides: Any) -> Litestar:
        return create_app(fake_settings(**overrides), registry=registry)

    return make
