"""HAProxy (Debian's package, the compose stack's config) in front of two replicas, one killed.

Six clients send streamed and non-streamed chat completions through the proxy. Mid-run one
replica is SIGKILLed, later restarted on the same port. What must hold: no request fails
unless its stream had already started on the killed replica (those are counted and reported,
never replayed); the dead replica is ejected within a bound and gets no traffic while down;
restarted, it comes back UP and takes traffic again.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

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
from service.settings import ServiceSettings
from tests.conftest import missing_tool
from tests.support.haproxy import (
    HAProxy,
    ServerStat,
    haproxy_binary,
    running_haproxy,
    server_stats,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS: Final = 6
MAX_REQUESTS: Final = 2000  # a hard cap; the phases below end the run long before it
MAX_TOKENS: Final = 24
EJECT_BOUND_S: Final = 5.0  # fall 2 x inter 1 s, plus a check timeout and polling slack
PHASE_LIMIT_S: Final = 15.0  # no phase waits longer than this for its condition
CLIENT_TIMEOUT_S: Final = 30.0


class Result(StrEnum):
    """How one request through the proxy ended, as its client saw it."""

    OK = "ok"
    FAILED_UNSTARTED = "failed before any response"  # must never happen
    FAILED_STARTED = "failed after its stream started"  # allowed: on the killed replica


@dataclass(frozen=True)
class Outcome:
    stream: bool
    result: Result
    detail: str = ""
    sent_at: float = 0.0  # time.monotonic() when the client sent it


def _body(stream: bool) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Count slowly."}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    }


def _non_streamed(client: httpx.Client) -> Outcome:
    try:
        r = client.post("/v1/chat/completions", json=_body(False))
    except httpx.HTTPError as exc:
        return Outcome(False, Result.FAILED_UNSTARTED, repr(exc))
    if r.status_code != 200:
        return Outcome(False, Result.FAILED_UNSTARTED, f"{r.status_code} {r.text[:200]}")
    if r.json()["choices"][0]["finish_reason"] != "length":
        return Outcome(False, Result.FAILED_UNSTARTED, r.text[:200])
    return Outcome(False, Result.OK)


def _streamed(client: httpx.Client) -> Outcome:
    request = client.build_request("POST", "/v1/chat/completions", json=_body(True))
    try:
        r = client.send(request, stream=True)
    except httpx.HTTPError as exc:
        return Outcome(True, Result.FAILED_UNSTARTED, repr(exc))
    try:
        if r.status_code != 200:
            r.read()
            return Outcome(True, Result.FAILED_UNSTARTED, f"{r.status_code} {r.text[:200]}")
        # From here on the client holds a 200 and the stream has started.
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    except httpx.HTTPError as exc:
        return Outcome(True, Result.FAILED_STARTED, repr(exc))
    finally:
        r.close()
    if not events or events[-1] != "[DONE]":
        return Outcome(True, Result.FAILED_STARTED, f"ended without [DONE] after {len(events)}")
    chunks = [json.loads(e) for e in events[:-1]]
    if any("error" in c for c in chunks):
        return Outcome(True, Result.FAILED_STARTED, f"error event: {events[-2][:200]}")
    return Outcome(True, Result.OK)


class Load:
    """``CLIENTS`` threads, each a closed loop alternating streamed and non-streamed requests."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)
        ]

    def _client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S, trust_env=False) as c:
            n = index  # de-synchronise the mix across clients
            while not self._stop.is_set():
                with self._lock:
                    if len(self.outcomes) >= MAX_REQUESTS:
                        return
                sent_at = time.monotonic()
                outcome = _streamed(c) if n % 2 else _non_streamed(c)
                n += 1
                with self._lock:
                    self.outcomes.append(dataclasses.replace(outcome, sent_at=sent_at))

    def done(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in self._threads), "a client thread did not finish"


def _wait_for(what: str, condition: Callable[[], bool], limit_s: float = PHASE_LIMIT_S) -> float:
    """Poll ``condition`` until true; seconds it took. Fails the test after ``limit_s``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > limit_s:
            pytest.fail(f"not within {limit_s:g} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def _replica_settings(port: int) -> ServiceSettings:
    return explicit_settings(
        engine="fake",
        host=LOOPBACK,
        port=port,
        fake_ttft_ms=30.0,
        fake_itl_ms=25.0,  # a ~0.6 s stream: several are in flight when the replica dies
        max_batch_delay_ms=2.0,
        warmup=False,
    )


def test_haproxy_ejects_a_killed_replica_without_failing_unstarted_requests(
    tmp_path: Path,
) -> None:
    binary = haproxy_binary()
    if binary is None:
        missing_tool("haproxy not found: apt-get install haproxy (scripts/_env.sh does)")
    settings = [_replica_settings(free_port()) for _ in range(2)]
    replicas = [
        start_replica(s, log_path=tmp_path / f"replica-{i}.log") for i, s in enumerate(settings)
    ]
    restarted: list[Replica] = []
    load: Load | None = None
    try:
        wait_ready(*replicas, timeout_s=60)
        upstreams = [f"{s.host}:{s.port}" for s in settings]
        with (
            running_haproxy(binary, upstreams, tmp_path / "haproxy.log") as proxy,
            httpx.Client(timeout=2, trust_env=False) as stats_client,
        ):

            def stats() -> dict[str, ServerStat]:
                return server_stats(proxy.stats_url, stats_client)

            victim, survivor = "tokenbooth-1", "tokenbooth-2"
            _wait_for("both servers UP", lambda: all(s.up for s in stats().values()))

            traffic = load = Load(proxy.url)
            traffic.start()
            _wait_for(
                "both replicas serve traffic",
                lambda: (
                    traffic.done() >= 12 and all(s.sessions_total > 0 for s in stats().values())
                ),
            )

            killed_at = time.monotonic()
            replicas[0].proc.kill()  # SIGKILL: no drain, connections reset mid-response
            replicas[0].proc.wait()
            done_at_kill = load.done()
            eject_s = _wait_for("killed replica ejected", lambda: not stats()[victim].up)
            assert eject_s <= EJECT_BOUND_S, _report(load, proxy, f"ejected after {eject_s:.1f} s")
            down = stats()

            # While it is down, every new request lands on the survivor.
            _wait_for("load continues on the survivor", lambda: traffic.done() >= done_at_kill + 20)
            during = stats()
            assert during[victim].sessions_total == down[victim].sessions_total
            assert not during[victim].up
            assert during[survivor].sessions_total > down[survivor].sessions_total

            restarted.append(start_replica(settings[0], log_path=tmp_path / "replica-0b.log"))
            wait_ready(restarted[0], timeout_s=60)
            up_s = _wait_for("restarted replica UP again", lambda: stats()[victim].up)
            _wait_for(
                "restarted replica takes traffic",
                lambda: stats()[victim].sessions_total > down[victim].sessions_total + 5,
            )
            load.stop()
            summary = _report(load, proxy, f"ejected in {eject_s:.1f} s, back UP in {up_s:.1f} s")
            print(summary)
            by_result = _count(load.outcomes)
            # Every request sent after the kill succeeded: refused connections to the dead
            # replica were retried on the survivor until it was ejected, then none went there.
            late = [
                o for o in load.outcomes if o.sent_at >= killed_at and o.result is not Result.OK
            ]
            assert late == [], summary
            # Requests already on the killed replica: a stream that had started may fail (never
            # replayed). One that had no response yet is not retried by Debian's HAProxy 2.6.12
            # when the dead peer resets the connection (see deploy/compose/haproxy.cfg): counted
            # and bounded by what can be in flight, one request per client.
            in_flight_failures = [o for o in load.outcomes if o.result is not Result.OK]
            assert len(in_flight_failures) <= CLIENTS, summary
            assert all(o.sent_at < killed_at for o in in_flight_failures), summary
            assert by_result[Result.OK] >= 40, summary
    finally:
        if load is not None:
            load.stop()
        stop_replicas(*replicas, *restarted)


def _count(outcomes: list[Outcome]) -> dict[Result, int]:
    return {r: sum(o.result is r for o in outcomes) for r in Result}


def _report(load: Load, proxy: HAProxy, headline: str) -> str:
    with load._lock:
        outcomes = list(load.outcomes)
    counts = _count(outcomes)
    lines = [
        f"{headline}; {len(outcomes)} requests: " + ", ".join(f"{n} {r}" for r, n in counts.items())
    ]
    lines += [
        f"  {o.result} (stream={o.stream}): {o.detail}"
        for o in outcomes
        if o.result is not Result.OK
    ][:20]
    log = proxy.log_path.read_text(errors="replace").splitlines()
    lines += ["haproxy log (last lines):", *log[-15:]]
    return "\n".join(lines)
