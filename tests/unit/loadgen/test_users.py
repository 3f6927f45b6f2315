"""The users' send-and-time path against a scripted server, over real HTTP/1.1 on loopback.

Each framing and connection behaviour of :mod:`tests.support.sse_server` is driven through
:func:`loadgen.users.measure_request` with the session :func:`loadgen.users.new_session` builds,
and the tests assert the result rows. The client runs in a child process: importing
:mod:`loadgen.users` imports Locust, whose gevent monkey-patching must never reach the test
process. All cases run at once in that child (one greenlet each), so the whole module costs
about one Locust import and the longest script.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from loadgen.results import Col, Point
from loadgen.spec import LoadLevel
from loadgen.summary import percentile, summarize_point
from loadgen.transport import NO_RESPONSE
from tests.support.sse_server import DROP_DELAY_S, FIRST_S, GAP_S, THINK_S, Conn, SSEServer

ROOT = Path(__file__).resolve().parents[3]

# The child: every case in its own greenlet, each with its own session, rows to a JSON file.
CLIENT = textwrap.dedent(
    """
    import json, sys, time

    import gevent
    import locust
    from locust.env import Environment

    from loadgen.users import measure_request, new_session

    cases, out = json.loads(sys.argv[1]), sys.argv[2]
    env = Environment(events=locust.events)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "stream": True, "stream_options": {"include_usage": True}}

    def run(case):
        session = new_session(env, pool_size=4)
        rows = []
        for _ in range(case["requests"]):
            scheduled = time.time() if case["scheduled"] else None
            rows.append(measure_request(session, case["url"], case["api"], body,
                                        timeout_s=10.0, scheduled_at=scheduled))
        session.close()
        return rows

    jobs = {name: gevent.spawn(run, case) for name, case in cases.items()}
    gevent.joinall(list(jobs.values()), raise_error=True)
    with open(out, "w") as f:
        json.dump({name: job.value for name, job in jobs.items()}, f)
    """
)


@dataclass(frozen=True)
class Case:
    script: str
    conn: Conn = Conn.KEEP
    requests: int = 1
    api: str = "chat"
    scheduled: bool = False  # open loop: each send scheduled for the moment it is made


FRAMINGS = ("lf", "crlf", "cr", "crlf-split", "bom", "comments", "multiline")
CASES: dict[str, Case] = {
    **{name: Case(name) for name in FRAMINGS},
    "reasoning": Case("reasoning"),
    "tools": Case("tools"),
    "completions": Case("completions", api="completions"),
    "error": Case("error"),
    "keep": Case("quick", Conn.KEEP, 3),
    "close": Case("quick", Conn.CLOSE, 3),
    "close-silent": Case("quick", Conn.CLOSE_SILENT, 3),
    "drop-reused": Case("quick", Conn.DROP_REUSED, 3, scheduled=True),
    "reset-reused": Case("quick", Conn.RESET_REUSED, 3, scheduled=True),
    "answer-once": Case("quick", Conn.ANSWER_ONCE, 2),
    "drop-all": Case("quick", Conn.DROP_ALL, 1),
}


@dataclass(frozen=True)
class Run:
    rows: dict[str, list[dict[str, Any]]]
    server: SSEServer


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Every case's rows, measured once by the real user code in a child process."""
    out = tmp_path_factory.mktemp("users") / "rows.json"
    with SSEServer() as server:
        cases = {
            name: {**asdict(c), "url": server.url(name, c.script, c.conn)}
            for name, c in CASES.items()
        }
        child = subprocess.run(
            [sys.executable, "-c", CLIENT, json.dumps(cases), str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert child.returncode == 0, child.stderr[-4000:]
        yield Run(json.loads(out.read_text()), server)


def only(run: Run, case: str) -> dict[str, Any]:
    (row,) = run.rows[case]
    return row


def assert_in_window(value: float, low: float, high: float) -> None:
    assert low <= value < high, (low, value, high)


@pytest.mark.parametrize("case", FRAMINGS)
def test_every_framing_measures_three_tokens_at_the_reads_that_brought_them(
    run: Run, case: str
) -> None:
    row = only(run, case)
    assert (row[Col.STATUS], row[Col.OK], row[Col.ERROR]) == (200, True, "")
    assert row[Col.STREAMED_CHUNKS] == 3  # the role-only and finish-only chunks are no tokens
    assert row[Col.FINISH_REASON] == "stop"
    assert (row[Col.PROMPT_TOKENS], row[Col.COMPLETION_TOKENS]) == (7, 3)  # usage-only chunk
    assert row[Col.RETRIES] == 0
    # The first token was written FIRST_S after the request arrived, the next GAP_S later: a
    # token stamped one read late (a held CR, a comment taken for a token) falls outside.
    assert_in_window(row[Col.TTFT_S], FIRST_S, FIRST_S + GAP_S / 2)
    assert row[Col.TTFT_CONTENT_S] == row[Col.TTFT_S]
    assert len(row[Col.ITL_S]) == 2
    for gap in row[Col.ITL_S]:
        assert_in_window(gap, GAP_S / 2, GAP_S * 2)


def test_reasoning_then_content_gives_two_first_token_times_think_s_apart(run: Run) -> None:
    row = only(run, "reasoning")
    assert row[Col.OK] is True
    assert row[Col.STREAMED_CHUNKS] == 4  # reasoning tokens are generated tokens
    assert_in_window(row[Col.TTFT_S], FIRST_S, FIRST_S + GAP_S / 2)
    assert_in_window(row[Col.TTFT_CONTENT_S] - row[Col.TTFT_S], 0.8 * THINK_S, 1.5 * THINK_S)
    # ITL and TPOT keep counting every generated token, the silence included.
    assert len(row[Col.ITL_S]) == 3
    assert max(row[Col.ITL_S]) >= 0.8 * THINK_S
    assert row[Col.FINISH_REASON] == "stop"


def test_tool_call_pieces_are_generated_tokens_and_no_content(run: Run) -> None:
    row = only(run, "tools")
    assert (row[Col.STATUS], row[Col.OK], row[Col.ERROR]) == (200, True, "")
    assert row[Col.STREAMED_CHUNKS] == 4  # the name and three argument fragments; "" is none
    assert row[Col.FINISH_REASON] == "tool_calls"
    assert_in_window(row[Col.TTFT_S], FIRST_S, FIRST_S + GAP_S / 2)
    assert math.isnan(row[Col.TTFT_CONTENT_S])


def test_completions_text_is_content(run: Run) -> None:
    row = only(run, "completions")
    assert (row[Col.OK], row[Col.STREAMED_CHUNKS], row[Col.FINISH_REASON]) == (True, 3, "length")
    assert_in_window(row[Col.TTFT_S], FIRST_S, FIRST_S + GAP_S / 2)
    assert row[Col.TTFT_CONTENT_S] == row[Col.TTFT_S]


def test_an_error_object_mid_stream_fails_the_request_with_its_message(run: Run) -> None:
    row = only(run, "error")
    assert (row[Col.STATUS], row[Col.OK], row[Col.ERROR]) == (200, False, "engine died")
    assert row[Col.STREAMED_CHUNKS] == 1
    assert row[Col.RETRIES] == 0


def test_keep_alive_connections_are_reused(run: Run) -> None:
    # The baseline of the cases below: without a close, three requests share one connection.
    rows = run.rows["keep"]
    assert [r[Col.OK] for r in rows] == [True] * 3
    assert [r[Col.RETRIES] for r in rows] == [0] * 3
    assert run.server.log("keep") == [(0, "answered")] * 3


@pytest.mark.parametrize("case", ["close", "close-silent"])
def test_a_server_closing_after_each_response_costs_no_error(run: Run, case: str) -> None:
    rows = run.rows[case]
    assert [(r[Col.STATUS], r[Col.OK], r[Col.ERROR]) for r in rows] == [(200, True, "")] * 3
    assert [r[Col.STREAMED_CHUNKS] for r in rows] == [3] * 3
    assert run.server.log(case) == [(0, "answered"), (1, "answered"), (2, "answered")]
    if case == "close":
        # "Connection: close" is honoured: no request goes out on a closed connection.
        assert [r[Col.RETRIES] for r in rows] == [0] * 3
    else:
        # Closed without a word: the client sees the close at once, or resends once.
        assert all(r[Col.RETRIES] in (0, 1) for r in rows)


@pytest.mark.parametrize("case", ["drop-reused", "reset-reused"])
def test_a_reused_connection_the_server_closed_is_resent_once_and_timed_from_the_resend(
    run: Run, case: str
) -> None:
    rows = run.rows[case]
    assert [(r[Col.STATUS], r[Col.OK], r[Col.ERROR]) for r in rows] == [(200, True, "")] * 3
    assert [r[Col.STREAMED_CHUNKS] for r in rows] == [3] * 3
    assert [r[Col.RETRIES] for r in rows] == [0, 1, 1]
    assert run.server.log(case) == [
        (0, "answered"),
        (0, "dropped"),
        (1, "answered"),
        (1, "dropped"),
        (2, "answered"),
    ]
    for r in rows[1:]:
        # The dropped send waited DROP_DELAY_S for nothing: the client's time, not the
        # server's, so latency starts at the resend and the wait shows as schedule lag.
        assert r[Col.E2E_S] < DROP_DELAY_S
        assert r[Col.SCHEDULE_LAG_S] >= DROP_DELAY_S
        assert r[Col.TTFT_FROM_SCHEDULE_S] >= DROP_DELAY_S + r[Col.TTFT_S] - 1e-6
        assert r[Col.SENT_AT] >= r[Col.SCHEDULED_AT] + DROP_DELAY_S


def test_a_resend_that_fails_too_is_an_error_and_is_not_repeated(run: Run) -> None:
    first, second = run.rows["answer-once"]
    assert (first[Col.OK], first[Col.RETRIES]) == (True, 0)
    assert (second[Col.STATUS], second[Col.OK], second[Col.RETRIES]) == (0, False, 1)
    assert second[Col.ERROR].startswith(NO_RESPONSE)
    # Dropped on the reused connection, then on the fresh one: two sends, never a third.
    assert run.server.log("answer-once") == [(0, "answered"), (0, "dropped"), (1, "dropped")]


def test_a_fresh_connection_closed_without_a_response_is_a_server_error(run: Run) -> None:
    row = only(run, "drop-all")
    assert (row[Col.STATUS], row[Col.OK], row[Col.RETRIES]) == (0, False, 0)
    assert row[Col.ERROR].startswith(NO_RESPONSE)
    assert math.isnan(row[Col.TTFT_S])
    assert run.server.log("drop-all") == [(0, "dropped")]


def test_the_point_summary_sums_retries_and_takes_first_content_times(run: Run) -> None:
    with_content = [*run.rows["drop-reused"], *run.rows["answer-once"], *run.rows["reasoning"]]
    rows = [*with_content, *run.rows["tools"]]  # a tool call is no content: no such time
    s = summarize_point(
        rows, level=LoadLevel("concurrency", 1.0, "closed"), lag_threshold_s=1.0, min_samples=1
    )
    assert s[Point.RETRIES] == 2 + 1  # a failed request's resend counts too
    ok_content = [r[Col.TTFT_CONTENT_S] for r in with_content if r[Col.OK]]
    assert len(ok_content) == 5
    assert s[Point.TTFT_CONTENT_P95_S] == percentile(ok_content, 0.95)
