"""The report's sessions and shared-prefix view: TTFT by turn, the prefix note, and TTFT against
a run without prefixes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loadgen.results import Col, Env, RunDir, Server
from reports.analysis import Analysis, analyze
from reports.load import load_run
from reports.sessions import sessions_section
from tests.unit.reports.synth import (
    capacity_points,
    environment,
    spec_text,
    write_run,
)

PREFIX = "\n[workload]\nprefix_groups = 4\nprefix_tokens = 64\n"


def _run(
    path: Path, *, workload: str = "", ttft_factor: float = 1.0, kind: str = "tokenbooth"
) -> Analysis:
    env = environment() | {Env.SERVER: {Server.KIND: kind}}
    write_run(path, capacity_points(ttft_factor=ttft_factor), name=path.name, env=env)
    rd = RunDir(path)
    rd.write_spec(spec_text(path.name) + workload)
    return analyze(load_run(path), seed=0)


def test_plain_workloads_get_no_section(tmp_path: Path) -> None:
    assert sessions_section(_run(tmp_path / "plain")) is None


def test_prefix_note_says_tokenbooth_has_no_prefix_cache(tmp_path: Path) -> None:
    section = sessions_section(_run(tmp_path / "prefix", workload=PREFIX))
    assert section is not None and not section.tables
    (note,) = section.paragraphs
    assert "one of 4 system prompts of 64 tokens" in note
    assert "no prefix cache" in note
    other = sessions_section(_run(tmp_path / "vllm", workload=PREFIX, kind="vllm"))
    assert other is not None and "tokenbooth report NO_PREFIX_RUN THIS_RUN" in other.paragraphs[0]


def test_prefix_ttft_is_compared_with_a_run_without_prefixes(tmp_path: Path) -> None:
    base = _run(tmp_path / "base")
    slower = _run(tmp_path / "prefix", workload=PREFIX, ttft_factor=1.5)
    section = sessions_section(slower, base)
    assert section is not None
    (table,) = section.tables
    assert table.key == "prefix-table" and table.rows
    changes = {(row[0].startswith("float16"), row[5]) for row in table.rows}
    # int8 points' TTFT is 1.5x the baseline's; the synthetic float16 points' is unchanged.
    assert changes == {(False, "+50.0%"), (True, "+0.0%")}, changes
    # A baseline with prefixes of its own is no baseline.
    assert not sessions_section(slower, slower).tables  # type: ignore[union-attr]


def test_sessions_section_shows_ttft_by_turn(tmp_path: Path) -> None:
    path = tmp_path / "sessions"
    analysis = _run(path, workload='\n[workload]\nkind = "sessions"\n')
    # Give the first point's ok requests turns 1..3 with TTFT rising by turn.
    req = analysis.run.requests
    ok = req.index[(req[Col.POINT_ID] == 0) & req[Col.OK]]
    req[Col.TURN] = 0
    req.loc[ok, Col.TURN] = np.arange(len(ok)) % 3 + 1
    req.loc[ok, Col.TTFT_S] = req.loc[ok, Col.TURN] * 0.1
    section = sessions_section(analysis)
    assert section is not None
    (table,) = section.tables
    assert [row[1] for row in table.rows] == ["1", "2", "3"]
    assert [row[6] for row in table.rows] == ["1.00×", "2.00×", "3.00×"]
    assert [f.key for f in section.figures] == ["ttft_by_turn"]
