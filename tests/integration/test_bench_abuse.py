"""``tokenbooth bench abuse`` end to end on the fake engine, at sizes that take seconds.

Runs the command as a user would (a subprocess, so raising the descriptor limit and the
replicas it starts stay out of the test process) and checks that every scenario printed its
table and summary line and wrote its figures with the right types, and that every scenario
meets its targets (connections bounded, stalled streams cut and not counted as successes,
health and other streams responsive, shutdown in budget, no request lost).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

_SCENARIOS = ("slowloris", "stalled", "large-prompt", "drain")


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


@pytest.fixture(scope="module")
def abuse_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """(stdout, JSON figures) of one small ``bench abuse`` run over every scenario."""
    out = tmp_path_factory.mktemp("abuse") / "abuse.json"
    argv = [
        sys.executable, "-m", "service.cli", "bench", "abuse", "--no-fail", "--json", str(out),
        "--slowloris-connections", "30",
        "--stalled-streams", "2",
        "--large-prompt-requests", "2", "--large-prompt-bytes", "262144",
        "--large-prompt-stream-tokens", "80",
        "--drain-streams", "2", "--drain-max-tokens", "400",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(Path(out).read_text())


def test_every_scenario_prints_its_table_and_summary(abuse_run: tuple[str, dict[str, Any]]) -> None:
    stdout, figures = abuse_run
    lines = stdout.splitlines()
    summary = lines[lines.index("== summary ==") + 1 :]
    for name in _SCENARIOS:
        assert f"== {name} ==" in lines
        (line,) = [s for s in summary if s.split()[0] == name]
        assert line.split()[1] in ("PASS", "FAIL")
        verdict = figures["scenarios"][name]
        assert isinstance(verdict["ok"], bool)
        assert verdict["ok"] == (line.split()[1] == "PASS")
        assert verdict["checks"] and all(isinstance(c["ok"], bool) for c in verdict["checks"])
        assert "error" not in dict(verdict["rows"]), verdict["rows"]
        failed = [c for c in verdict["checks"] if not c["ok"]]
        assert verdict["ok"], f"{name}: {failed}"
    assert figures["ok"] is True


def test_slowloris_figures(abuse_run: tuple[str, dict[str, Any]]) -> None:
    f = abuse_run[1]["scenarios"]["slowloris"]["figures"]
    assert f["connections"] == 30 and f["per_kind"] == 10
    for key in ("open_at_header_checkpoint", "open_at_body_checkpoint", "open_at_end"):
        assert set(f[key]) == {"idle", "headers", "body"}
        assert all(isinstance(v, int) and 0 <= v <= 10 for v in f[key].values())
    fds = f["server_fds"]
    assert set(fds) == {"start", "peak", "end", "after"}
    assert all(isinstance(v, int) and v > 0 for v in fds.values())
    assert fds["peak"] >= fds["start"]
    assert isinstance(f["real_ok"], int) and isinstance(f["real_failed"], int)
    assert f["real_ok"] + f["real_failed"] > 0
    assert _is_num(f["health_p50_s"]) and _is_num(f["health_max_s"])
    assert _is_num(f["header_timeout_s"]) and _is_num(f["body_timeout_s"])


def test_stalled_figures(abuse_run: tuple[str, dict[str, Any]]) -> None:
    f = abuse_run[1]["scenarios"]["stalled"]["figures"]
    assert f["streams"] == 2 and len(f["read_bytes"]) == 2
    assert all(isinstance(b, int) and b > 0 for b in f["read_bytes"])
    assert isinstance(f["server_released"], int) and 0 <= f["server_released"] <= 2
    assert f["running_zero_after_s"] is None or _is_num(f["running_zero_after_s"])
    assert f["recorded_after_s"] is None or _is_num(f["recorded_after_s"])
    assert isinstance(f["requests_during"], dict) and _is_num(f["successes_during"])
    assert _is_num(f["tokens_generated"]) and _is_num(f["write_timeout_s"])


def test_large_prompt_figures(abuse_run: tuple[str, dict[str, Any]]) -> None:
    f = abuse_run[1]["scenarios"]["large-prompt"]["figures"]
    for key in ("baseline_gap_max_s", "abuse_gap_max_s", "baseline_gap_p99_s", "abuse_gap_p99_s"):
        assert _is_num(f[key]), key
    assert _is_num(f["abuse_health_max_s"])
    assert isinstance(f["oversized_sent"], int) and f["oversized_sent"] > 0
    assert sum(f["oversized_statuses"].values()) == f["oversized_sent"]
    assert _is_num(f["reject_p50_s"]) and _is_num(f["reject_max_s"])
    assert f["prompt_bytes"] == 262144


def test_drain_figures(abuse_run: tuple[str, dict[str, Any]]) -> None:
    f = abuse_run[1]["scenarios"]["drain"]["figures"]
    assert _is_num(f["shutdown_s"]) and f["shutdown_s"] > 0
    assert f["drain_timeout_s"] == 2.0
    assert isinstance(f["exit_code"], int)
    assert isinstance(f["requests_lost"], int) and f["requests_lost"] >= 0
    assert sum(f["stream_endings"].values()) == 2
    assert sum(f["plain_endings"].values()) == 2


def test_cli_offers_every_scenario() -> None:
    from bench.abuse import SCENARIOS
    from bench.cli import _ABUSE_SCENARIOS  # spelled again there to keep the parser light

    assert tuple(_ABUSE_SCENARIOS) == SCENARIOS == _SCENARIOS
