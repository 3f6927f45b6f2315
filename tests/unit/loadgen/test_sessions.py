"""Multi-turn sessions: seeded plans, history that grows turn by turn with the actual replies,
the stream's reply text, and clear spec errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest

import loadgen
from loadgen.results import Col, Point
from loadgen.sessions import (
    SessionPlan,
    SessionState,
    TurnPlan,
    build_sessions,
    session_id,
    sessions_needed,
)
from loadgen.spec import LengthDist, SpecError, WorkloadSpec, parse_spec
from loadgen.sse import StreamTally
from loadgen.summary import Stat, turn_summary
from loadgen.workload import TokenCounter, WordCounter, load_tokenizer, prefix_texts
from tests.support.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> TokenCounter:
    """SmolLM2's real tokenizer (a tiny random model's directory), as the workload uses it."""
    found = load_tokenizer(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))
    assert not isinstance(found, WordCounter)
    return found


def sessions_spec(**kw: object) -> WorkloadSpec:
    base: dict[str, object] = {
        "kind": "sessions",
        "turns": LengthDist(dist="uniform", min=2, max=5),
        "input_tokens": LengthDist(value=12),
        "output_tokens": LengthDist(value=6),
    }
    return WorkloadSpec(**(base | kw))  # type: ignore[arg-type]


def test_plans_are_seeded_with_turns_from_the_distribution(counter: TokenCounter) -> None:
    plans = build_sessions(sessions_spec(), counter, 40, seed=5)
    assert plans == build_sessions(sessions_spec(), counter, 40, seed=5)
    assert plans != build_sessions(sessions_spec(), counter, 40, seed=6)
    lengths = {len(p.turns) for p in plans}
    assert lengths <= {2, 3, 4, 5} and len(lengths) > 1
    for p in plans:
        assert p.system is None and p.group == -1
        for t in p.turns:
            assert t.user_tokens == counter.count(t.user) == 12
            assert t.max_tokens == 6
    users = [t.user for p in plans for t in p.turns]
    assert len(set(users)) == len(users)  # every user message its own


def test_prefixed_sessions_carry_their_groups_system_prompt(counter: TokenCounter) -> None:
    spec = sessions_spec(prefix_groups=2, prefix_tokens=20)
    plans = build_sessions(spec, counter, 30, seed=5)
    prefixes = prefix_texts(spec, counter, seed=5)
    assert {p.group for p in plans} == {0, 1}
    for p in plans:
        assert p.system == prefixes[p.group]
        assert p.system_tokens == counter.count(prefixes[p.group]) == 20
        item = SessionState(p, 0).next_item()
        assert item.messages is not None
        assert item.messages[0] == {"role": "system", "content": prefixes[p.group]}


def test_history_grows_turn_by_turn_with_the_previous_replies(counter: TokenCounter) -> None:
    plan = build_sessions(sessions_spec(turns=LengthDist(value=3)), counter, 1, seed=1)[0]
    state = SessionState(plan, session_id(7))
    replies = ["first reply text", "a second, longer reply from the model"]
    seen: list[tuple[dict[str, str], ...]] = []
    for k in range(3):
        assert state.turn == k + 1 and not state.done
        item = state.next_item()
        assert item.messages is not None
        seen.append(item.messages)
        assert item.max_tokens == plan.turns[k].max_tokens
        if k < 2:
            state.record_reply(replies[k], counter.count(replies[k]))
    assert state.turns_done == 2  # the last turn has not been answered yet
    u = [t.user for t in plan.turns]
    assert seen[0] == ({"role": "user", "content": u[0]},)
    assert seen[1] == (
        {"role": "user", "content": u[0]},
        {"role": "assistant", "content": replies[0]},
        {"role": "user", "content": u[1]},
    )
    assert seen[2][:3] == seen[1] and seen[2][3:] == (
        {"role": "assistant", "content": replies[1]},
        {"role": "user", "content": u[2]},
    )
    # The workload's own count grows by the previous exchange, and matches the content.
    counts = [sum(counter.count(m["content"]) for m in msgs) for msgs in seen]
    assert counts[0] < counts[1] < counts[2]
    state.record_reply("done", 1)
    assert state.done


def test_input_tokens_count_every_message_of_the_conversation() -> None:
    plan = SessionPlan(
        turns=(TurnPlan("a b c", 3, 4), TurnPlan("d e", 2, 4)), system="s1 s2", system_tokens=2
    )
    state = SessionState(plan, 0)
    assert state.next_item().input_tokens == 2 + 3
    state.record_reply("x y z w", 4)
    assert state.next_item().input_tokens == 2 + 3 + 4 + 2


def test_an_abandoned_session_is_done() -> None:
    state = SessionState(SessionPlan(turns=(TurnPlan("a", 1, 1),) * 3), 0)
    state.abandon()
    assert state.done


def test_plans_survive_a_locust_message(counter: TokenCounter) -> None:
    spec = sessions_spec(prefix_groups=2, prefix_tokens=8)
    plans = build_sessions(spec, counter, 5, seed=2)
    wire = json.loads(json.dumps([p.to_dict() for p in plans]))
    assert [SessionPlan.from_dict(d) for d in wire] == plans


def test_session_ids_are_unique_across_workers() -> None:
    assert session_id(5) == 5
    assert session_id(5, worker=1) != session_id(5, worker=0)
    assert session_id(5, worker=1) >> 32 == 1


def test_sessions_needed_covers_the_requests() -> None:
    assert LengthDist(dist="uniform", min=2, max=6).expected == 4.0
    assert LengthDist(dist="normal", mean=9, std=2, min=1, max=6).expected == 6.0
    assert sessions_needed(sessions_spec(turns=LengthDist(value=4)), 400) == 100
    assert sessions_needed(sessions_spec(), 10) == 16


def test_tally_keeps_the_reply_text_when_asked() -> None:
    chunks = [{"choices": [{"delta": {"role": "assistant"}}]}] + [
        {"choices": [{"delta": {"content": piece}}]} for piece in ("Hello", ",", " world")
    ]
    data = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
    keep, plain = StreamTally(chat=True, keep_text=True), StreamTally(chat=True)
    for t in (keep, plain):
        t.feed(data, 1.0)
    assert keep.text == "Hello, world"
    assert plain.text == "" and len(plain.token_times) == len(keep.token_times) == 3
    completion = StreamTally(chat=False, keep_text=True)
    completion.feed(b'data: {"choices": [{"text": "abc"}]}\n\n', 1.0)
    assert completion.text == "abc"


# ------------------------------------------------------------------------------ the spec

SPEC = """\
[run]
name = "s"

[load]
mode = "{mode}"

[workload]
{body}
"""


def parse(body: str, mode: str = "concurrency") -> WorkloadSpec:
    return parse_spec(SPEC.format(body=body, mode=mode), "s.toml").workload


def spec_error(body: str, mode: str = "concurrency") -> str:
    with pytest.raises(SpecError) as info:
        parse(body, mode)
    return str(info.value)


def test_sessions_keys_parse() -> None:
    w = parse(
        'kind = "sessions"\nturns = 3\n'
        'turn_think_time_s = { dist = "uniform", min = 0.5, max = 2.0 }'
    )
    assert w.kind == "sessions"
    assert w.turns == LengthDist(dist="fixed", value=3, min=3, max=3)
    assert w.turn_think_time_s == LengthDist(dist="uniform", min=0.5, max=2.0)
    w = parse('kind = "sessions"\nturns = { dist = "uniform", min = 2, max = 8 }')
    assert (w.turns.min, w.turns.max, w.turn_think_time_s) == (2, 8, None)
    assert parse('kind = "sessions"\nturn_think_time_s = 1.5').turn_think_time_s == LengthDist(
        value=1.5, min=1.5, max=1.5
    )
    assert parse('kind = "sessions"', mode="rate").kind == "sessions"


@pytest.mark.parametrize(
    ("body", "mode", "message"),
    [
        (
            "turns = 3",
            "concurrency",
            's.toml:8: [workload] turns: only applies to kind = "sessions"',
        ),
        (
            "turn_think_time_s = 1.0",
            "concurrency",
            's.toml:8: [workload] turn_think_time_s: only applies to kind = "sessions"',
        ),
        (
            'kind = "sessions"\napi = "completions"',
            "concurrency",
            "s.toml:9: [workload] api: sessions send the conversation history as chat messages",
        ),
        (
            'kind = "sessions"',
            "auto",
            "s.toml:5: [load] mode: 'auto' searches request rates, while a sessions workload "
            "offers sessions/s",
        ),
        (
            'kind = "sessions"\nturns = 0',
            "concurrency",
            "s.toml:9: [workload] turns: fixed needs value >= 1",
        ),
        (
            'kind = "sessions"\nturns = 2.5',
            "concurrency",
            "s.toml:9: [workload] turns: expected a table",
        ),
        (
            'kind = "sessions"\nturn_think_time_s = -1.0',
            "concurrency",
            "s.toml:9: [workload] turn_think_time_s: fixed needs value >= 0",
        ),
        ('kind = "chats"', "concurrency", "s.toml:8: [workload] kind: must be one of"),
    ],
)
def test_sessions_spec_errors_name_the_key_and_line(body: str, mode: str, message: str) -> None:
    assert message in spec_error(body, mode)


def test_the_sessions_example_parses() -> None:
    example = Path(loadgen.__file__).parent / "examples" / "sessions.toml"
    spec = parse_spec(example.read_text(), str(example))
    assert spec.workload.kind == "sessions" and spec.workload.api == "chat"


def test_turn_summary_groups_ok_session_rows_by_point_and_turn() -> None:
    rows = pd.DataFrame(
        {
            Col.POINT_ID: [0, 0, 0, 0, 0, 1],
            Col.TURN: [1, 1, 2, 2, 0, 1],
            Col.OK: [True, True, True, False, True, True],
            Col.TTFT_S: [0.1, 0.3, 0.5, 9.0, 7.0, 0.2],
            Col.PROMPT_TOKENS: [10, 20, 40, 99, 5, 12],
        }
    )
    out = turn_summary(rows)
    assert out[[Col.POINT_ID, Col.TURN]].values.tolist() == [[0, 1], [0, 2], [1, 1]]
    first = out.iloc[0]
    assert first[Stat.N_TTFT] == 2 and math.isclose(first[Point.TTFT_P50_S], 0.2)
    assert first[Col.PROMPT_TOKENS] == 15.0
    assert out.iloc[1][Point.TTFT_P95_S] == 0.5  # the failed turn-2 row is left out
    assert turn_summary(rows.drop(columns=[Col.TURN])).empty  # a run from before the column


# ------------------------------------------------------------------------------ over HTTP

# The child runs the real session loop (loadgen.users imports Locust, whose gevent patching
# must not reach the test process): a closed-loop session, an open-loop one, and one whose
# second turn the server fails.
CLIENT = """
import json, sys, time

import locust
from locust.env import Environment

from loadgen.sessions import SessionPlan
from loadgen.spec import LengthDist
from loadgen.users import Balancer, PointContext, new_session

url, plans, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
ctx = PointContext(
    api="chat", model="m", items=[], balancer=Balancer([url]), ignore_eos=False,
    temperature=0.0, timeout_s=10.0, measure_from=0.0, stop_at=time.time() + 20.0,
    max_requests=100, sessions=[SessionPlan.from_dict(p) for p in plans],
    turn_think_time=LengthDist(value=0.1, min=0.1, max=0.1), seed=3,
)
session = new_session(Environment(events=locust.events), pool_size=4)
ctx.run_session(session, 0, None)
ctx.run_session(session, -1, time.time())
ctx.run_session(session, 1, None)
with open(out, "w") as f:
    json.dump(ctx.rows, f)
"""


class _Echo(BaseHTTPRequestHandler):
    """Streams the reply ``reply-N`` (N: the request's number); fails a FAIL session's turn 2."""

    bodies: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        messages = body["messages"]
        if messages[0]["content"] == "FAIL" and len(messages) > 2:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        words = sum(len(m["content"].split()) for m in messages)
        chunks = [
            {"choices": [{"delta": {"role": "assistant"}}]},
            {"choices": [{"delta": {"content": "reply"}}]},
            {"choices": [{"delta": {"content": f"-{len(self.bodies)}"}}]},
            {"choices": [{"delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": words, "completion_tokens": 2}},
        ]
        data = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks)
        data += b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_sessions_send_the_actual_replies_back_closed_and_open_loop(tmp_path: Path) -> None:
    turn = [TurnPlan("hello one", 2, 4), TurnPlan("and two", 2, 4), TurnPlan("three now", 2, 4)]
    plans = [
        SessionPlan(turns=tuple(turn), system="sys prompt", system_tokens=2, group=0),
        SessionPlan(turns=tuple(turn[:2])),
        SessionPlan(turns=tuple(turn), system="FAIL", system_tokens=1, group=1),
    ]
    _Echo.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    out = tmp_path / "rows.json"
    try:
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                CLIENT,
                f"http://127.0.0.1:{server.server_address[1]}",
                json.dumps([p.to_dict() for p in plans]),
                str(out),
            ],
            cwd=Path(__file__).resolve().parents[3],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert child.returncode == 0, child.stderr[-4000:]
    rows = json.loads(out.read_text())
    bodies = _Echo.bodies
    # 3 closed-loop turns, 2 open-loop turns, then the failing session's turns 1 and 2.
    assert len(bodies) == len(rows) == 7
    assert [r[Col.TURN] for r in rows] == [1, 2, 3, 1, 2, 1, 2]
    assert [r[Col.SESSION] for r in rows] == [0, 0, 0, 1, 1, 2, 2]
    assert [r[Col.OK] for r in rows] == [True] * 5 + [True, False]
    # Turn 3 of the first session: system prompt, both exchanges with the served replies.
    assert bodies[2]["messages"] == [
        {"role": "system", "content": "sys prompt"},
        {"role": "user", "content": "hello one"},
        {"role": "assistant", "content": "reply-1"},
        {"role": "user", "content": "and two"},
        {"role": "assistant", "content": "reply-2"},
        {"role": "user", "content": "three now"},
    ]
    assert bodies[4]["messages"][1] == {"role": "assistant", "content": "reply-4"}
    prompts = [r[Col.PROMPT_TOKENS] for r in rows[:3]]
    assert prompts[0] < prompts[1] < prompts[2]
    # Closed loop: no schedule; the later turn waits the think time after the reply.
    assert all(math.isnan(r[Col.SCHEDULED_AT]) for r in rows[:3])
    assert rows[1][Col.SENT_AT] - rows[0][Col.FINISHED_AT] >= 0.1
    # Open loop: the later turn is due a think time after the previous reply ended.
    second = rows[4]
    assert second[Col.SCHEDULED_AT] >= rows[3][Col.FINISHED_AT] + 0.1
    assert 0 <= second[Col.SCHEDULE_LAG_S] < 0.05
    assert all(r[Col.USER] == -1 for r in rows[3:5])


def test_open_loop_sessions_points_offer_requests_per_second() -> None:
    import pandas as pd

    from loadgen.results import Point
    from loadgen.spec import LoadLevel
    from loadgen.summary import summarize_point
    from reports.sessions import offered_rate

    level = LoadLevel("rate", 2.0, "poisson", turns_per_arrival=4.0)
    out = summarize_point([], level=level, lag_threshold_s=1.0, min_samples=0)
    assert (out[Point.OFFERED_RPS], out[Point.OFFERED_SESSIONS_PER_S]) == (8.0, 2.0)
    row = pd.Series({Point.LOAD_LEVEL: 8.0, Point.OFFERED_SESSIONS_PER_S: 2.0})
    assert offered_rate(row) == "2 sessions/s (≈ 8 req/s)"
    plain = summarize_point(
        [], level=LoadLevel("rate", 3.0, "poisson"), lag_threshold_s=1.0, min_samples=0
    )
    assert plain[Point.OFFERED_RPS] == 3.0 and math.isnan(plain[Point.OFFERED_SESSIONS_PER_S])
    assert offered_rate(pd.Series({Point.LOAD_LEVEL: 3.0})) == "3 req/s"
