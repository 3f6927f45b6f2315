"""``tokenbooth sweep`` against a server of each kind: detection, readiness, the server view.

Each kind is a mock (``tests/support/mock_servers.py``) that streams in that server's style and
serves its recorded ``/metrics`` with counters advanced per request, by the server's own names.
The sweep sees a remote target of only ``urls`` and a workload with no tokenizer set, as a user
pointing the harness at their deployment would. The sweep runs as a subprocess (Locust's gevent
patching must not reach this process); the mock runs here, on loopback, in a thread.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from loadgen.results import Env, Point, RunDir, Server, Srv
from reports.pipeline import build_report
from tests.support.mock_servers import KINDS, MockServer
from tests.support.sweeps import run_sweep

pytestmark = pytest.mark.integration

OUTPUT_TOKENS = 8
PROMPT_WORDS = 16  # the mocks count whitespace words; the workload is built for 16 "tokens"

VERSIONS = {
    "tokenbooth": "0.1.0",
    "vllm": "0.10.1.1",
    "llamacpp": "b6100-1d72c841",
    "tgi": "3.3.6",
    "sglang": "0.5.2",
    "openai": "",
}

_TTFT_MEAN, _E2E_MEAN, _QUEUE = (
    Point.SERVER_TTFT_MEAN_S,
    Point.SERVER_E2E_MEAN_S,
    Point.SERVER_QUEUE_WAIT_MEAN_S,
)
_REQ, _PROMPT, _GEN = (
    Point.SERVER_REQUESTS,
    Point.SERVER_PROMPT_TOKENS,
    Point.SERVER_GENERATION_TOKENS,
)
_KV, _PREEMPT = Point.SERVER_KV_CACHE_USAGE_MAX, Point.SERVER_PREEMPTIONS

# What each kind's metrics give the points.csv server view; every other column stays empty.
FILLED: dict[str, set[str]] = {
    "tokenbooth": {_TTFT_MEAN, _E2E_MEAN, _QUEUE, _REQ, _PROMPT, _GEN},
    "vllm": {_TTFT_MEAN, _E2E_MEAN, _QUEUE, _REQ, _PROMPT, _GEN, _KV, _PREEMPT},
    "llamacpp": {_PROMPT, _GEN},
    "tgi": {_E2E_MEAN, _QUEUE, _REQ, _PROMPT, _GEN, _KV},
    "sglang": {_TTFT_MEAN, _E2E_MEAN, _QUEUE, _REQ, _PROMPT, _GEN, _KV, _PREEMPT},
    "openai": set(),
}
VIEW = (_TTFT_MEAN, _E2E_MEAN, _QUEUE, _REQ, _PROMPT, _GEN, _KV, _PREEMPT)


def spec_text(name: str, url: str) -> str:
    """A remote target of only ``urls``: two short, bounded closed-loop points."""
    return textwrap.dedent(
        f"""
        [run]
        name = "{name}"
        duration_s = 1.0
        warmup_s = 0.3
        max_requests = 400
        min_samples = 5
        request_timeout_s = 10.0

        [target]
        kind = "remote"
        urls = ["{url}"]
        ready_timeout_s = 10.0

        [load]
        concurrency = [1, 2]

        [workload]
        api = "chat"
        input_tokens = {{ dist = "fixed", value = {PROMPT_WORDS} }}
        output_tokens = {{ dist = "fixed", value = {OUTPUT_TOKENS} }}
        """
    ).lstrip()


def sweep(tmp_path: Path, kind: str, url: str) -> RunDir:
    return run_sweep(tmp_path, kind, spec_text(f"mock-{kind}", url), timeout_s=120)


@pytest.fixture(scope="module", params=list(KINDS))
def swept(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(kind, run directory, the mock it measured), one sweep per kind."""
    kind = str(request.param)
    with MockServer(kind, ttft_s=0.004, itl_s=0.001) as server:
        run = sweep(tmp_path_factory.mktemp(kind), kind, server.base_url)
    assert server.errors == []
    return kind, run, server


def test_the_kind_and_version_are_recorded(swept: Any) -> None:
    kind, run, _ = swept
    server = run.environment()[Env.SERVER]
    assert server[Server.KIND] == kind
    assert server[Server.VERSION] == VERSIONS[kind]
    assert server[Server.SERVER_VIEW] is (kind != "openai")
    if kind != "openai":
        assert server[Server.DETECTED_FROM].startswith("/metrics: ")


def test_every_point_completes_and_is_valid(swept: Any) -> None:
    _, run, _ = swept
    points = run.points()
    assert points[Point.STATUS].tolist() == ["ok", "ok"]
    assert points[Point.VALID].all(), points[Point.INVALID_REASON].tolist()
    assert (points[Point.N_ERRORS] == 0).all()


def test_the_server_view_is_filled_from_the_kinds_own_metrics(swept: Any) -> None:
    kind, run, _ = swept
    points = run.points()
    for col in VIEW:
        values = pd.to_numeric(points[col], errors="coerce")
        if col in FILLED[kind]:
            assert values.notna().all(), (kind, col, values.tolist())
        else:
            # Not exported by this server: absent, never a made-up zero.
            assert values.isna().all(), (kind, col, values.tolist())


def test_server_counts_agree_with_what_the_mock_served(swept: Any) -> None:
    kind, run, _ = swept
    if kind == "openai":
        return
    for _, p in run.points().iterrows():
        generated = float(p[_GEN])
        assert generated > 0 and generated % OUTPUT_TOKENS == 0
        served = generated / OUTPUT_TOKENS
        assert float(p[_PROMPT]) == pytest.approx(served * PROMPT_WORDS)
        if _REQ in FILLED[kind]:
            assert float(p[_REQ]) == served
        # The server's window is the client's, give or take the requests in flight at its ends.
        assert abs(served - float(p[Point.N_REQUESTS])) <= float(p[Point.LOAD_LEVEL]) + 1


def test_client_and_server_ttft_are_reconciled_where_the_server_exports_it(swept: Any) -> None:
    kind, run, _ = swept
    if _TTFT_MEAN not in FILLED[kind]:
        return
    for _, p in run.points().iterrows():
        server_ttft, client_p50 = float(p[_TTFT_MEAN]), float(p[Point.TTFT_P50_S])
        assert server_ttft >= 0.004  # the mock waits 4 ms before the first token
        # The client's clock holds the server's plus loopback, HTTP and SSE framing.
        assert server_ttft - 0.001 < client_p50 < server_ttft + 0.05
        assert float(p[_E2E_MEAN]) >= server_ttft


def test_gauges_and_preemptions_are_real_values(swept: Any) -> None:
    kind, run, _ = swept
    points = run.points()
    if _KV in FILLED[kind]:
        assert ((points[_KV] >= 0) & (points[_KV] <= 1)).all()
    if kind in ("vllm", "sglang"):
        # Their mocks keep finished requests' blocks cached, so the gauge never reads empty;
        # TGI's running batch can be empty at both scrapes, and 0 is then what it holds.
        assert (points[_KV] > 0).all()
    if _PREEMPT in FILLED[kind]:
        assert (points[_PREEMPT] == 0).all()  # exported, and nothing was preempted


def test_server_rows_keep_the_servers_own_names(swept: Any) -> None:
    kind, run, _ = swept
    server = run.server()
    if kind == "openai":
        assert server.empty
        return
    prefix = {"tokenbooth": "tokenbooth_", "vllm": "vllm:", "llamacpp": "llamacpp:"}
    prefix |= {"tgi": "tgi_", "sglang": "sglang:"}
    gen = server[server[Srv.METRIC] == "tokenbooth_generation_tokens_total"]
    assert len(gen) and gen[Srv.SOURCE].str.startswith(prefix[kind]).all()


@pytest.mark.parametrize("kind", ["openai", "vllm"])
def test_the_report_says_what_the_server_view_holds(
    kind: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with MockServer(kind) as server:
        run = sweep(tmp_path_factory.mktemp(f"report-{kind}"), kind, server.base_url)
    files = build_report(run.path, output=run.path / "report")
    markdown = files.markdown.read_text()
    unavailable = "Server-side figures are not available for this run"
    if kind == "openai":
        assert unavailable in markdown
        assert "not available: client-side view only" in markdown
        assert "Server view per point" not in markdown
    else:
        assert unavailable not in markdown
        assert "Server view per point" in markdown
        assert "vllm 0.10.1.1" in markdown  # the environment names the server and its version
        assert "client − server TTFT ms" in markdown
    assert not math.isnan(float(run.points()[Point.ACHIEVED_RPS].iloc[0]))


def test_no_prompt_is_sent_twice_in_a_run(swept: Any) -> None:
    """Each point continues the workload where the last stopped: a server with a prefix cache
    (vLLM, SGLang, llama.cpp) would otherwise see warm prompts and report a flattering TTFT."""
    _, run, server = swept
    assert len(server.prompts) >= int(run.points()[Point.N_REQUESTS].sum())
    assert len(set(server.prompts)) == len(server.prompts)
