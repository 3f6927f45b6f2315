"""API key: which paths it guards, the switches for ops and health paths, the key file, the flag."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

import service.cli as cli
import service.server as server_module
from service.app import create_app
from service.cli import build_parser, settings_from_args, warn_api_key_flag
from service.launch import env_name
from service.settings import ApiKeyFileError, ServiceSettings
from tests.conftest import fake_settings, wait_ready

KEY = "s3cret-key"
GOOD = {"Authorization": f"Bearer {KEY}"}
API_PATHS = ["/v1/models"]
OPS_PATHS = [
    "/metrics",
    "/docs",
    "/docs/openapi.json",
    "/docs/openapi.yaml",
    "/docs/swagger",
    "/docs/redoc",
]
HEALTH_PATHS = ["/health/live", "/health/ready"]
ALL_PATHS = API_PATHS + OPS_PATHS + HEALTH_PATHS


async def _statuses(app: Litestar, headers: dict[str, str] | None = None) -> dict[str, int]:
    """Status of a GET of every path in ALL_PATHS, once the model is loaded."""
    async with AsyncTestClient(app) as client:
        # Readiness may be guarded: wait with the key, then ask as the test says.
        await wait_ready(_Keyed(client))
        return {p: (await client.get(p, headers=headers)).status_code for p in ALL_PATHS}


class _Keyed:
    """A test client that sends the API key with every GET (for :func:`wait_ready`)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def get(self, path: str) -> Any:
        return await self._client.get(path, headers=GOOD)


@pytest.fixture
def make_app() -> Callable[..., Litestar]:
    """An app on the fake engine per call, each with a registry of its own."""

    def make(**overrides: Any) -> Litestar:
        return create_app(fake_settings(**overrides), registry=CollectorRegistry())

    return make


def _expect(protected: list[str], status: int) -> dict[str, int]:
    return {p: status if p in protected else 200 for p in ALL_PATHS}


async def test_without_a_key_nothing_is_guarded(make_app: Callable[..., Litestar]) -> None:
    app = make_app(protect_ops_endpoints=True, protect_health_endpoints=True)
    assert await _statuses(app) == _expect([], 401)


async def test_key_guards_the_api_and_leaves_ops_and_health_open_by_default(
    make_app: Callable[..., Litestar],
) -> None:
    app = make_app(api_key=KEY)
    assert await _statuses(app) == _expect(API_PATHS, 401)
    assert await _statuses(make_app(api_key=KEY), GOOD) == _expect([], 401)


async def test_protect_ops_guards_metrics_and_docs_but_not_health(
    make_app: Callable[..., Litestar],
) -> None:
    app = make_app(api_key=KEY, protect_ops_endpoints=True)
    assert await _statuses(app) == _expect(API_PATHS + OPS_PATHS, 401)
    wrong = {"Authorization": "Bearer not-the-key"}
    assert await _statuses(make_app(api_key=KEY, protect_ops_endpoints=True), wrong) == _expect(
        API_PATHS + OPS_PATHS, 401
    )
    assert await _statuses(make_app(api_key=KEY, protect_ops_endpoints=True), GOOD) == _expect(
        [], 401
    )


async def test_protect_health_is_a_switch_of_its_own(make_app: Callable[..., Litestar]) -> None:
    app = make_app(api_key=KEY, protect_health_endpoints=True)
    assert await _statuses(app) == _expect(API_PATHS + HEALTH_PATHS, 401)
    both = {"protect_ops_endpoints": True, "protect_health_endpoints": True}
    assert await _statuses(make_app(api_key=KEY, **both)) == _expect(ALL_PATHS, 401)
    assert await _statuses(make_app(api_key=KEY, **both), GOOD) == _expect([], 401)


async def test_unauthorized_answer_is_openai_shaped(make_app: Callable[..., Litestar]) -> None:
    async with AsyncTestClient(make_app(api_key=KEY, protect_ops_endpoints=True)) as client:
        r = await client.get("/docs/openapi.json")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert KEY not in r.text


async def test_key_file_is_read_without_its_trailing_newline(
    tmp_path: Path, make_app: Callable[..., Litestar]
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key = fake_settings(api_key_file=key_file).effective_api_key
    assert key is not None and key.get_secret_value() == KEY
    settings = {"api_key_file": key_file, "protect_ops_endpoints": True}
    assert await _statuses(make_app(**settings), GOOD) == _expect([], 401)
    assert await _statuses(make_app(**settings)) == _expect(API_PATHS + OPS_PATHS, 401)


async def test_key_file_is_read_once_at_start(
    tmp_path: Path, make_app: Callable[..., Litestar]
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\r\n")
    app = make_app(api_key_file=key_file)
    key_file.unlink()  # a running replica must not depend on the file any more
    assert await _statuses(app, GOOD) == _expect([], 401)


def test_key_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    monkeypatch.delenv(env_name("api_key"), raising=False)
    monkeypatch.setenv(env_name("api_key_file"), str(key_file))
    key = ServiceSettings().effective_api_key
    assert key is not None and key.get_secret_value() == KEY


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "unreadable"])
def test_unreadable_key_file_fails_at_start_with_a_clear_error(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "key"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_text("\n")
    elif kind == "unreadable":
        path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ApiKeyFileError, match=f"api_key_file {path}: ") as info:
        ServiceSettings(engine="fake", api_key_file=path)
    reason = {
        "missing": "No such file or directory",
        "directory": "Is a directory",
        "empty": "empty",
        "unreadable": "utf-8",
    }[kind]
    assert reason in info.value.detail
    # `tokenbooth serve` stops before serving and says why in one line, no traceback.
    assert cli.main(["serve", "--engine", "fake", "--api-key-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"tokenbooth: error: api_key_file {path}: " in err
    assert "Traceback" not in err


def test_key_and_key_file_together_are_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    with pytest.raises(ValueError, match="api_key or api_key_file, not both"):
        ServiceSettings(api_key=SecretStr(KEY), api_key_file=key_file)


def _warnings(buffer: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [line for line in lines if line.get("event") == "api_key_on_command_line"]


def test_api_key_flag_logs_a_warning_without_the_key(log_buffer: io.StringIO) -> None:
    args = build_parser().parse_args(["serve", "--engine", "fake", "--api-key", KEY])
    key = settings_from_args(args).effective_api_key
    assert key is not None and key.get_secret_value() == KEY
    warn_api_key_flag(args)
    (warning,) = _warnings(log_buffer)
    assert warning["level"] == "WARNING"
    assert env_name("api_key") in warning["detail"] and "--api-key-file" in warning["detail"]
    assert KEY not in log_buffer.getvalue()


def test_no_warning_for_the_key_file_flag(tmp_path: Path, log_buffer: io.StringIO) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    args = build_parser().parse_args(["serve", "--api-key-file", str(key_file)])
    warn_api_key_flag(args)
    assert _warnings(log_buffer) == []


def test_serve_command_warns_once_logging_is_configured(
    monkeypatch: pytest.MonkeyPatch, log_buffer: io.StringIO
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cli, "configure_logging", lambda *_a, **_k: calls.append("logging"))

    def fake_serve(settings: ServiceSettings) -> int:
        calls.append(f"serve after {len(_warnings(log_buffer))} warning")
        return 0

    monkeypatch.setattr(server_module, "serve", fake_serve)
    assert cli.main(["serve", "--engine", "fake", "--api-key", KEY]) == 0
    assert calls == ["logging", "serve after 1 warning"]
