"""``tokenbooth bench compare`` end to end: two fake-engine replicas whose truth is known.

Replica A streams a token every 5 ms, B every 10 ms (same TTFT), so A/B ITL is 0.5 and A's
single-stream output rate is higher; the command runs as a user would (a subprocess) against
their URLs, at one closed-loop and one Poisson level with tiny windows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.launch import (
    LOOPBACK,
    Replica,
    explicit_settings,
    free_port,
    start_replica,
    stop_replicas,
    wait_ready,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

_MAX_TOKENS = 16


@pytest.fixture(scope="module")
def fake_pair() -> Iterator[tuple[Replica, Replica]]:
    """Two fake-engine replicas on loopback: ITL 5 ms and 10 ms, TTFT 30 ms each."""
    replicas = tuple(
        start_replica(
            explicit_settings(
                engine="fake",
                fake_itl_ms=itl,
                fake_ttft_ms=30.0,
                host=LOOPBACK,
                port=free_port(),
                log_level="WARNING",
            )
        )
        for itl in (5.0, 10.0)
    )
    try:
        wait_ready(*replicas, timeout_s=60)
        yield replicas[0], replicas[1]
    finally:
        stop_replicas(*replicas)


@pytest.fixture(scope="module")
def compare_run(
    fake_pair: tuple[Replica, Replica], tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, Any]]:
    """(stdout, JSON) of one small ``bench compare`` run against the pair."""
    out = tmp_path_factory.mktemp("compare") / "compare.json"
    argv = [
        sys.executable, "-m", "service.cli", "bench", "compare",
        fake_pair[0].base_url, fake_pair[1].base_url,
        "--label-a", "fast", "--label-b", "slow",
        "--streams", "1", "--rates", "5",
        "--duration-s", "2", "--warmup-s", "0.5", "--repeats", "1",
        "--max-tokens", str(_MAX_TOKENS), "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_the_ratios_reflect_the_servers_truth(compare_run: tuple[str, dict[str, Any]]) -> None:
    _, doc = compare_run
    for level in ("1 stream", "Poisson 5 req/s"):
        itl = doc["ratios"][level]["itl_p50_ms"]["median"]
        assert itl == pytest.approx(0.5, abs=0.1), level
        ttft = doc["ratios"][level]["ttft_p50_ms"]["median"]
        assert ttft == pytest.approx(1.0, abs=0.35), level
    # One stream: output rate is max_tokens / (TTFT + 15 ITL): 16/0.105 vs 16/0.18 tok/s.
    tps = doc["ratios"]["1 stream"]["tokens_per_s"]["median"]
    assert tps == pytest.approx(0.18 / 0.105, rel=0.2)
    for phase in doc["phases"]:
        truth = 5.0 if phase["server"] == "fast" else 10.0
        assert phase["itl_p50_ms"] == pytest.approx(truth, rel=0.3)
        assert phase["errors"] == phase["short"] == phase["no_usage"] == 0
        assert phase["requests"] >= 5


def test_the_json_and_the_table_are_complete(compare_run: tuple[str, dict[str, Any]]) -> None:
    stdout, doc = compare_run
    assert [p["server"] for p in doc["phases"]] == ["fast", "slow", "fast", "slow"]
    assert {(p["level"], p["repeat"]) for p in doc["phases"]} == {
        ("1 stream", 0),
        ("Poisson 5 req/s", 0),
    }
    assert [s["label"] for s in doc["servers"]] == ["fast", "slow"]
    assert doc["served"] == [None, None]  # both given by URL
    assert all(s["model"] for s in doc["servers"])
    assert len(doc["summaries"]) == 4
    assert doc["config"]["max_tokens"] == _MAX_TOKENS
    for p in doc["phases"]:
        for key in ("tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "e2e_p50_ms"):
            assert isinstance(p[key], float) and p[key] > 0, (key, p)
        assert 0 <= p["client_cpu_share"] < 1
    table = doc["table_markdown"]
    assert table in stdout
    rows = table.splitlines()
    assert rows[0].startswith("| load | fast tok/s |") and len(rows) == 4
    assert rows[2].startswith("| 1 stream |") and rows[3].startswith("| Poisson 5 req/s |")
    assert "client CPU" in stdout


def test_a_missing_url_is_one_line_not_a_traceback() -> None:
    argv = [sys.executable, "-m", "service.cli", "bench", "compare", "http://127.0.0.1:1"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "expected 2 URL(s)" in proc.stderr and "Traceback" not in proc.stderr


def test_servers_it_starts_itself_are_stopped_at_the_end(tmp_path: Path) -> None:
    out = tmp_path / "served.json"
    argv = [
        sys.executable, "-m", "service.cli", "bench", "compare",
        "--serve-a", "tokenbooth", "--serve-b", "tokenbooth", "--label-a", "a", "--label-b", "b",
        "--server-arg", "engine=fake", "--server-arg-b", "fake_itl_ms=20",
        "--streams", "1", "--rates", "none", "--duration-s", "1", "--warmup-s", "0.2",
        "--repeats", "1", "--max-tokens", "8", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [s["settings"] for s in doc["served"]] == [
        {"engine": "fake"},
        {"engine": "fake", "fake_itl_ms": "20"},
    ]
    itl = {p["server"]: p["itl_p50_ms"] for p in doc["phases"]}
    assert itl["b"] == pytest.approx(20.0, rel=0.3) and itl["a"] == pytest.approx(10.0, rel=0.3)
    for server in doc["servers"]:
        with pytest.raises(httpx.ConnectError):
            httpx.get(server["url"] + "/health/ready", timeout=2)
