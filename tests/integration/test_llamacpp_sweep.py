"""``tokenbooth sweep`` against a real third-party server: llama.cpp's ``llama-server``.

The peer is built from source (``scripts/build_llama_server.sh``) and serves the same SmolLM2
GGUF as tokenbooth's default model. The target is a remote one of only ``urls``, as a user
pointing the harness at their own llama.cpp would write it. The sweep runs as a subprocess
(Locust's gevent patching must not reach this process).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest

from loadgen.results import Col, Env, Point, RunDir, Server, TokensSource
from reports.pipeline import build_report
from tests.support.sweeps import run_sweep

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTPUT_TOKENS = 16
CONCURRENCY = (1, 4)


def _spec(url: str) -> str:
    return textwrap.dedent(
        f"""
        [run]
        name = "llamacpp"
        duration_s = 6.0
        warmup_s = 1.0
        max_requests = 400
        min_samples = 5
        request_timeout_s = 60.0

        [target]
        kind = "remote"
        urls = ["{url}"]
        ready_timeout_s = 60.0

        [load]
        concurrency = [{", ".join(str(c) for c in CONCURRENCY)}]

        [workload]
        api = "chat"
        input_tokens = {{ dist = "fixed", value = 32 }}
        output_tokens = {{ dist = "fixed", value = {OUTPUT_TOKENS} }}

        [slo]
        ttft_p95_s = 5.0
        """
    ).lstrip()


@pytest.fixture(scope="module")
def llamacpp_run(llama_server: str, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    return run_sweep(tmp_path_factory.mktemp("llamacpp-sweep"), "llamacpp", _spec(llama_server))


def test_every_point_is_valid_with_no_errors(llamacpp_run: RunDir) -> None:
    points = llamacpp_run.points()
    assert points[Point.STATUS].tolist() == ["ok"] * len(CONCURRENCY)
    assert points[Point.VALID].all(), points[Point.INVALID_REASON].tolist()
    assert (points[Point.N_ERRORS] == 0).all()


def test_the_server_is_detected_as_llamacpp(llamacpp_run: RunDir) -> None:
    server = llamacpp_run.environment()[Env.SERVER]
    assert server[Server.KIND] == "llamacpp"
    assert server[Server.VERSION].startswith("b")
    assert server[Server.SERVER_VIEW] is True


def test_tokens_come_from_llamacpps_usage(llamacpp_run: RunDir) -> None:
    rows = llamacpp_run.requests()
    ok = rows[rows[Col.OK]]
    assert (ok[Col.TOKENS_SOURCE] == TokensSource.USAGE).all()
    # ignore_eos: every request generated exactly what it asked for, by the server's count
    # and by the chunks the client saw.
    assert (ok[Col.COMPLETION_TOKENS] == OUTPUT_TOKENS).all()
    assert not ok[Col.USAGE_MISMATCH].any()
    assert (ok[Col.PROMPT_TOKENS] > 32).all()  # the chat template adds its own tokens


def test_server_counters_fill_the_server_view_and_agree_with_the_client(
    llamacpp_run: RunDir,
) -> None:
    points = llamacpp_run.points()
    rows = llamacpp_run.requests()
    for _, p in points.iterrows():
        generated = float(p[Point.SERVER_GENERATION_TOKENS])
        assert generated > 0 and float(p[Point.SERVER_PROMPT_TOKENS]) > 0
        # The server's window is the client's, give or take the requests in flight at its ends
        # (at most one per user at each end).
        ok = rows[(rows[Col.POINT_ID] == p[Point.POINT_ID]) & rows[Col.OK]]
        client = float(ok[Col.COMPLETION_TOKENS].sum())
        slack = 2 * float(p[Point.LOAD_LEVEL]) * OUTPUT_TOKENS
        assert abs(generated - client) <= slack, (generated, client)
        # llama.cpp exports no latency histograms and no request counter: absent, never zero.
        for col in (Point.SERVER_TTFT_MEAN_S, Point.SERVER_E2E_MEAN_S, Point.SERVER_REQUESTS):
            assert pd.isna(p[col]), col


def test_the_report_names_the_server_and_what_it_does_not_export(
    llamacpp_run: RunDir, tmp_path: Path
) -> None:
    files = build_report(llamacpp_run.path, output=tmp_path / "report")
    html = files.html.read_text()
    assert "llamacpp" in html
    assert "absent rather than zero" in html
