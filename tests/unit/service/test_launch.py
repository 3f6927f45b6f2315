"""The replica launcher: the child's environment carries the settings, readiness fails fast."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.launch import (
    LOOPBACK,
    Replica,
    ReplicaExitedError,
    ReplicaNotReadyError,
    env_name,
    explicit_settings,
    free_port,
    replica_env,
    start_replica,
    stop_replicas,
    wait_ready,
)
from service.settings import ServiceSettings

PREFIX = ServiceSettings.model_config["env_prefix"]


def _non_default_settings() -> ServiceSettings:
    """A value unlike the default in every kind of field: path, literal, secret, bool, None."""
    settings = explicit_settings(
        model=Path("/models/some model"),
        served_model_name="served-name",
        engine="fake",
        device="cpu",
        compute_type="int8_float32",
        quantization="float16",
        models_dir=Path("/tmp/models"),
        batch_workers=3,
        spare_workers=2,
        intra_threads=0,
        max_batch_size=7,
        max_batch_delay_ms=0.1 + 0.2,  # a float whose shortest repr has many digits
        max_queue_size=11,
        max_tokens_cap=512,
        default_max_tokens=5,
        max_body_bytes=4096,
        request_timeout_s=12.5,
        drain_timeout_s=0.0,
        max_messages=9,
        allow_ignore_eos=False,
        host="0.0.0.0",
        port=0,
        header_timeout_s=2.5,
        body_timeout_s=3.5,
        keep_alive_timeout_s=1.5,
        write_timeout_s=4.5,
        max_connections=33,
        max_header_bytes=2048,
        send_buffer_bytes=32768,
        api_key=SecretStr("s3cret key=1"),
        protect_ops_endpoints=True,
        protect_health_endpoints=True,
        ttft_slo_ms=250.0,
        tpot_slo_ms=80.0,
        e2e_slo_ms=900.0,
        log_level="DEBUG",
        log_json=False,
        gpu_sample_interval_s=1.25,
        trace_prompts=True,
        metrics_compat="vllm",
        batch_policy="triton",
        fake_ttft_ms=1.5,
        fake_itl_ms=0.25,
        fake_context_length=64,
        warmup=False,
        gil_switch_interval_ms=0.5,
    )
    defaults = explicit_settings()
    same = [n for n in ServiceSettings.model_fields if getattr(settings, n) == getattr(defaults, n)]
    # api_key_file excludes api_key: test_api_key_file_reaches_the_child_as_a_path covers it.
    assert same == ["api_key_file"], (
        f"give {same} a non-default value here, so the round trip covers them"
    )
    return settings


def _read_back(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """``ServiceSettings()`` as a child started with exactly ``env`` reads it."""
    for key in list(os.environ):
        if key not in env:
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return ServiceSettings()


def test_settings_round_trip_through_the_replica_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _non_default_settings()
    env = replica_env(settings)
    assert env[env_name("api_key")] == "s3cret key=1"
    assert env[env_name("log_json")] == "false"
    assert _read_back(env, monkeypatch) == settings


def test_api_key_file_reaches_the_child_as_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret key=1\n")
    settings = explicit_settings(api_key_file=key_file)
    env = replica_env(settings)
    # The child reads the file itself: the key is in neither its environment nor its argv.
    assert env[env_name("api_key_file")] == str(key_file)
    assert env_name("api_key") not in env
    assert "s3cret" not in " ".join(env.values())
    assert _read_back(env, monkeypatch) == settings


def test_the_parents_own_settings_variables_do_not_reach_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(f"{PREFIX}API_KEY", "from-the-shell")
    monkeypatch.setenv(f"{PREFIX.lower()}max_queue_size", "3")  # read case-insensitively
    monkeypatch.setenv(f"{PREFIX}NOT_A_FIELD", "x")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    settings = explicit_settings(engine="fake")
    assert settings.api_key is None and settings.max_queue_size == 256
    env = replica_env(settings)
    assert env["OMP_NUM_THREADS"] == "5"  # everything else is inherited
    assert f"{PREFIX}NOT_A_FIELD" not in env
    assert f"{PREFIX.lower()}max_queue_size" not in env
    assert env_name("api_key") not in env
    assert _read_back(env, monkeypatch) == settings


def test_none_where_the_default_is_not_cannot_be_passed() -> None:
    with pytest.raises(ValueError, match="ttft_slo_ms=None"):
        replica_env(explicit_settings(ttft_slo_ms=None))


def _python(code: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT)


def test_wait_ready_fails_fast_with_the_exit_code_and_the_log(tmp_path: Path) -> None:
    log = tmp_path / "replica.log"
    proc = _python("import sys; print('bad setting: max_batch_size'); sys.exit(3)", log)
    replica = Replica(f"http://{LOOPBACK}:{free_port()}", proc, log)
    started = time.monotonic()
    with pytest.raises(ReplicaExitedError) as excinfo:
        wait_ready(replica, timeout_s=120)
    assert time.monotonic() - started < 10  # not the timeout
    assert excinfo.value.returncode == 3
    detail = excinfo.value.detail
    assert f"replica {replica.base_url} exited with code 3 before becoming ready" in detail
    assert "bad setting: max_batch_size" in detail


def test_a_replica_the_service_rejects_fails_fast_with_its_validation_error(
    tmp_path: Path,
) -> None:
    settings = explicit_settings(engine="fake", port=free_port())
    log = tmp_path / "logs" / "replica.log"
    # Override what replica_env wrote: the child's own settings validation must reject it.
    replica = start_replica(settings, log_path=log, extra_env={env_name("max_batch_size"): "0"})
    try:
        with pytest.raises(ReplicaExitedError) as excinfo:
            wait_ready(replica, timeout_s=120)
    finally:
        stop_replicas(replica)
    assert excinfo.value.returncode != 0
    assert "max_batch_size" in excinfo.value.detail
    assert str(log) in excinfo.value.detail


def test_wait_ready_sends_the_key_to_a_replica_that_guards_its_health_endpoints(
    tmp_path: Path,
) -> None:
    """Before the fix the readiness probe sent no key and a guarded replica never got ready."""
    settings = explicit_settings(
        engine="fake",
        port=free_port(),
        api_key=SecretStr("probe-key"),
        protect_health_endpoints=True,
    )
    replica = start_replica(settings, log_path=tmp_path / "replica.log")
    try:
        wait_ready(replica, timeout_s=60)
    finally:
        stop_replicas(replica)
    assert "probe-key" not in repr(replica)


class _Unready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.end_headers()
        self.wfile.write(b'{"status":"loading"}')

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def unready_server() -> Iterator[str]:
    """Base URL of a server whose readiness endpoint answers 503."""
    server = HTTPServer((LOOPBACK, 0), _Unready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOOPBACK}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("answers", [False, True])
def test_wait_ready_times_out_telling_unreachable_from_not_ready(
    answers: bool, unready_server: str, tmp_path: Path
) -> None:
    base = unready_server if answers else f"http://{LOOPBACK}:{free_port()}"
    replica = Replica(base, _python("import time; time.sleep(60)", tmp_path / "log"))
    try:
        with pytest.raises(ReplicaNotReadyError) as excinfo:
            wait_ready(replica, timeout_s=0.3)
    finally:
        stop_replicas(replica, grace_s=5)
    assert replica.proc.returncode is not None  # stopped
    assert excinfo.value.answered is answers
    assert f"not ready after 0.3 s: {base}" in excinfo.value.detail
    if answers:
        assert "/health/ready -> 503" in excinfo.value.detail
