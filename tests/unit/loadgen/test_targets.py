"""Targets: the per-configuration shell hook of remote ones, the settings of local replicas."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from loadgen.spec import ServerConfig, TargetSpec
from loadgen.targets import LocalReplicas, RemoteTarget, TargetError
from service.launch import env_name
from service.settings import ServiceSettings

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
