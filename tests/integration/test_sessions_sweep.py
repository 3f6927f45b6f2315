"""A sessions point end to end on the fake engine: every session's rows carry turns 1..T in
order, and each later turn sends a longer prompt (the history with the previous replies)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest

from loadgen.results import Col
from tests.support.sweeps import fake_target_toml, run_sweep, run_toml

pytestmark = pytest.mark.integration

TURNS = 3
USER_TOKENS = 16
REPLY_TOKENS = 8

SPEC = (
    run_toml(
        name="sessions",
        duration_s=4.0,
        warmup_s=0.5,
        max_requests=400,
        min_samples=5,
        request_timeout_s=20.0,
    )
    + fake_target_toml(ttft_ms=20, itl_ms=5, max_batch_size=8)
    + textwrap.dedent(
        f"""
        [load]
        mode = "concurrency"
        concurrency = [3]
        ramp_s = 0.05

        [workload]
        kind = "sessions"
        api = "chat"
        turns = {TURNS}
        turn_think_time_s = {{ dist = "uniform", min = 0.0, max = 0.05 }}
        input_tokens = {{ dist = "fixed", value = {USER_TOKENS} }}
        output_tokens = {{ dist = "fixed", value = {REPLY_TOKENS} }}
        prefix_groups = 2
        prefix_tokens = 12
        """
    ).lstrip()
)


def test_sessions_point_has_growing_turns(tmp_path: Path) -> None:
    run = run_sweep(tmp_path, "sessions", SPEC, timeout_s=40)
    rows = run.requests()
    ok = rows[rows[Col.OK]]
    assert len(ok) >= 10
    assert set(ok[Col.TURN]) <= set(range(1, TURNS + 1))
    complete = 0
    for sid, s in ok.groupby(Col.SESSION):
        assert sid >= 0
        s = s.sort_values(Col.SENT_AT)
        turns = s[Col.TURN].tolist()
        # Turns of a session are consecutive (a session that began in warm-up starts later).
        assert turns == list(range(turns[0], turns[0] + len(turns)))
        prompts = s[Col.PROMPT_TOKENS].tolist()
        # Each turn adds the previous reply and a new user message to the prompt.
        grow = pd.Series(prompts).diff().dropna()
        assert (grow >= USER_TOKENS + REPLY_TOKENS).all(), (sid, prompts)
        complete += turns == list(range(1, TURNS + 1))
    assert complete >= 2
    by_turn = ok.groupby(Col.TURN)[Col.PROMPT_TOKENS].mean()
    assert by_turn.is_monotonic_increasing and by_turn.index.tolist() == [1, 2, 3]
    # The report renders the per-turn view.
    from reports.pipeline import build_report

    files = build_report(run.path)
    html = files.html.read_text()
    assert "TTFT by turn" in html
    assert "ttft_by_turn" in files.figures
