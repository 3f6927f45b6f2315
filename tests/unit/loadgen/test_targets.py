"""Remote targets: the per-configuration shell hook."""

from __future__ import annotations

import time

import psutil
import pytest

from loadgen.spec import ServerConfig, TargetSpec
from loadgen.targets import RemoteTarget, TargetError

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
