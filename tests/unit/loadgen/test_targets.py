"""Targets: readiness and the per-configuration shell hook of remote ones, the settings of local
replicas."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from loadgen.results import PointStatus
from loadgen.spec import ServerConfig, TargetSpec
from loadgen.targets import LocalReplicas, RemoteTarget, TargetError
from service.launch import env_name, free_port
from service.settings import ServiceSettings
from tests.support.mock_servers import MockServer

CONFIG = ServerConfig(
    replicas=2,
    max_batch_size=8,
    max_batch_delay_ms=5.0,
    batch_workers=1,
    intra_threads=1,
    quantization="int8",
)


def test_hook_timeout_is_recorded_and_kills_what_the_hook_started() -> None:
    marker = f"tokenbooth-hook-{time.time_ns()}"
    target = RemoteTarget(
        TargetSpec(kind="remote", urls=("http://127.0.0.1:9",), hook=f"sleep 30 # {marker}")
    )
    started = time.monotonic()
    with pytest.raises(TargetError) as excinfo:
        target.apply(CONFIG, timeout_s=0.5)
    assert excinfo.value.status == "hook_failed"
    assert "did not finish" in excinfo.value.detail
    assert time.monotonic() - started < 10
    time.sleep(0.2)
    left = [
        p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])
    ]
    assert left == []


def test_failing_hook_reports_its_exit_code_and_stderr() -> None:
    target = RemoteTarget(
        TargetSpec(
            kind="remote",
            urls=("http://127.0.0.1:9",),
            hook="echo scaling to {replicas} >&2; exit 3",
        )
    )
    with pytest.raises(TargetError) as excinfo:
        target.apply(CONFIG, timeout_s=10)
    assert excinfo.value.status == "hook_failed"
    assert "exited 3" in excinfo.value.detail
    assert "scaling to 2" in excinfo.value.detail


def _local(tmp_path: Path, **extra_env: str) -> LocalReplicas:
    return LocalReplicas(
        CONFIG,
        TargetSpec(engine="fake"),
        model_dir=tmp_path / "model",
        log_dir=tmp_path / "replicas",
        extra_env=extra_env,
        request_timeout_s=30.0,
    )


def test_local_replica_settings_come_from_the_configuration_and_the_spec_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The harness's own shell does not configure its replicas.
    monkeypatch.setenv(env_name("api_key"), "from-the-shell")
    monkeypatch.setenv(env_name("fake_itl_ms"), "99")
    settings = _local(tmp_path, fake_ttft_ms="7.5", MAX_QUEUE_SIZE="12").settings()
    assert settings.engine == "fake"
    assert settings.model == tmp_path / "model"
    assert (settings.max_batch_size, settings.max_batch_delay_ms) == (8, 5.0)
    assert (settings.batch_workers, settings.intra_threads, settings.quantization) == (1, 1, "int8")
    assert settings.request_timeout_s == 30.0
    assert settings.fake_ttft_ms == 7.5
    assert settings.max_queue_size == 12  # the spec's env overrides the harness's choice
    assert settings.api_key is None
    assert settings.fake_itl_ms == ServiceSettings.model_fields["fake_itl_ms"].default
    assert settings.host == "127.0.0.1"


def test_a_spec_env_value_the_service_rejects_fails_the_configuration(tmp_path: Path) -> None:
    replicas = _local(tmp_path, max_batch_size="0")
    with pytest.raises(TargetError) as excinfo, replicas.running(ready_timeout_s=5):
        pass
    assert excinfo.value.status == "replica_not_ready"
    assert "invalid replica settings" in excinfo.value.detail
    assert "max_batch_size" in excinfo.value.detail
    assert replicas.replicas == []  # nothing was started


# ------------------------------------------------------------------------ remote readiness


def _remote(url: str, **target: Any) -> RemoteTarget:
    spec: dict[str, Any] = {"ready_timeout_s": 1.0, **target}
    return RemoteTarget(TargetSpec(kind="remote", urls=(url,), **spec))


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("tokenbooth", "/health/ready"),
        ("vllm", "/health"),
        ("llamacpp", "/health"),
        ("tgi", "/health"),
        ("sglang", "/health"),
        ("openai", "/v1/models"),  # no health endpoint at all
    ],
)
def test_a_remote_target_of_only_urls_is_ready_on_the_first_path_that_answers_200(
    kind: str, path: str
) -> None:
    with MockServer(kind) as server:
        target = _remote(server.base_url)
        target.apply(CONFIG)
    assert target.ready_via == {server.base_url: path}
    defaults = ["/health/ready", "/health", "/v1/models"]
    assert server.paths == defaults[: defaults.index(path) + 1]


def test_a_readiness_path_that_says_not_yet_is_not_skipped() -> None:
    # /health/ready exists and answers 503 (loading): /v1/models answering 200 proves nothing.
    loading = {"/health/ready": (503, {"status": "loading"})}
    with MockServer("tokenbooth", health=loading) as server, pytest.raises(TargetError) as excinfo:
        _remote(server.base_url).apply(CONFIG)
    assert excinfo.value.status == PointStatus.REPLICA_NOT_READY
    assert "/health/ready -> 503" in excinfo.value.detail
    assert "/v1/models" not in server.paths


def test_the_spec_ready_path_is_the_only_one_tried() -> None:
    with MockServer("vllm") as server:
        with pytest.raises(TargetError) as excinfo:
            _remote(server.base_url, ready_path="/ping").apply(CONFIG)
        assert excinfo.value.status == PointStatus.REPLICA_NOT_READY
        assert set(server.paths) == {"/ping"}
        target = _remote(server.base_url, ready_path="/version")
        target.apply(CONFIG)
    assert target.ready_via == {server.base_url: "/version"}


def test_a_named_kind_waits_on_its_own_readiness_paths() -> None:
    with MockServer("sglang") as server:
        target = _remote(server.base_url, server="sglang")
        target.apply(CONFIG)
    # /ready (newer SGLang) is a 404 here, so its /health decides.
    assert server.paths == ["/ready", "/health"]
    assert target.ready_via == {server.base_url: "/health"}


def test_a_server_where_no_path_exists_answered_but_is_not_ready() -> None:
    with MockServer("openai") as server, pytest.raises(TargetError) as excinfo:
        _remote(server.base_url, ready_path="/nope", ready_timeout_s=0.3).apply(CONFIG)
    assert excinfo.value.status == PointStatus.REPLICA_NOT_READY
    assert "no readiness path answered 200" in excinfo.value.detail
    assert "/nope -> 404" in excinfo.value.detail


def test_an_unreachable_remote_target_is_recorded_as_unreachable() -> None:
    with pytest.raises(TargetError) as excinfo:
        _remote(f"http://127.0.0.1:{free_port()}", ready_timeout_s=0.3).apply(CONFIG)
    assert excinfo.value.status == PointStatus.TARGET_UNREACHABLE
