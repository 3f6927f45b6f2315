"""Batch formation policies on the fake engine: ``triton`` cuts a burst of arrivals into a
partial batch ``max_batch_delay`` after its first request, ``adaptive`` waits for the burst to
end (bounded), and groups prompts of similar length when more wait than fit."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from service.batcher import Batcher
from service.job import Job
from service.settings import (
    ADAPTIVE_BURST_QUIET,
    ADAPTIVE_POLICY,
    TRITON_POLICY,
    ServiceSettings,
)
from tests.unit.service.test_batcher import RecordingEngine, finished, make_batcher, submit


async def _burst(batcher: Batcher, n: int, gap_s: float) -> list[Job]:
    """``n`` requests, one every ``gap_s``: clients re-sending after a batch ended."""
    jobs = []
    for i in range(n):
        jobs.append(submit(batcher, f"p{i}"))
        await asyncio.sleep(gap_s)
    return jobs


@pytest.mark.parametrize(
    ("policy", "expected"), [(TRITON_POLICY, "split"), (ADAPTIVE_POLICY, "one batch")]
)
async def test_a_burst_longer_than_the_delay(
    registry: CollectorRegistry, stoppable: list[Batcher], policy: str, expected: str
) -> None:
    # Arrivals 10 ms apart, delay 25 ms: the burst (8 x 10 ms) outlasts the delay. A first
    # batch of ~0.15 s gives the adaptive hold its bound (here the whole batch duration).
    batcher, engine = await make_batcher(
        registry,
        max_batch_size=8,
        max_batch_delay_s=0.025,
        batch_workers=1,
        policy=policy,
        adaptive_hold_fraction=1.0,
    )
    stoppable.append(batcher)
    await finished(submit(batcher, "warm", max_tokens=70))
    engine.batches.clear()
    jobs = await _burst(batcher, 8, 0.010)
    for job in jobs:
        await finished(job)
    if expected == "split":
        assert len(engine.batches) >= 2 and engine.batches[0] < 8
    else:
        assert engine.batches == [8]


async def test_adaptive_hold_is_bounded_by_a_share_of_a_batch(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    # A never-ending trickle (a request every 10 ms, delay 25 ms) must not hold a batch longer
    # than max(delay, 5 % of a recent batch): the first batch has no history, so 25 ms.
    batcher, engine = await make_batcher(
        registry,
        max_batch_size=64,
        max_batch_delay_s=0.025,
        batch_workers=1,
        policy=ADAPTIVE_POLICY,
    )
    stoppable.append(batcher)
    jobs = await _burst(batcher, 10, 0.010)
    first = jobs[0]
    await finished(first)
    assert first.started_at is not None
    assert first.started_at - first.enqueued_at < 0.025 * 1.6
    assert engine.batches[0] < 10
    for job in jobs[1:]:
        await finished(job)


async def test_adaptive_groups_similar_prompt_lengths(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    # One worker busy, then short and long prompts alternate in the queue; batches of 3: the
    # oldest (short) takes the other short ones, the long ones go together.
    batcher, _engine = await make_batcher(
        registry,
        max_batch_size=3,
        max_batch_delay_s=0.0,
        batch_workers=1,
        policy=ADAPTIVE_POLICY,
    )
    stoppable.append(batcher)
    blocker = submit(batcher, "x", max_tokens=30)
    short, long_ = "hi", "hi " * 40
    jobs = [submit(batcher, p) for p in (short, long_, short, long_, short, long_)]
    for job in [blocker, *jobs]:
        await finished(job)
    by_start: dict[float, list[int]] = {}
    for job in jobs:
        assert job.started_at is not None
        by_start.setdefault(job.started_at, []).append(len(job.prompt_tokens))
    groups = [sorted(v) for _, v in sorted(by_start.items())]
    assert all(len(set(g)) == 1 for g in groups), groups


async def test_triton_takes_the_oldest_whatever_their_lengths(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, _engine = await make_batcher(
        registry, max_batch_size=3, max_batch_delay_s=0.0, batch_workers=1, policy=TRITON_POLICY
    )
    stoppable.append(batcher)
    blocker = submit(batcher, "x", max_tokens=30)
    jobs = [submit(batcher, p) for p in ("hi", "hi " * 40, "hi", "hi " * 40, "hi", "hi " * 40)]
    for job in [blocker, *jobs]:
        await finished(job)
    assert jobs[0].started_at == jobs[1].started_at == jobs[2].started_at


# ------------------------------------------------------------------------- burst quiet gap

# What came before the requests under test: a long batch that has just finished (its clients
# re-send), one that finished longer ago than the adaptive hold cap, or no batch at all.
RIGHT_AFTER, LONG_AFTER, NO_BATCH = "right after a batch", "long after the last batch", "none"
# The previous batch lasts at least 5 ms + 249 x 2 ms (the fake engine only runs late): with a
# hold fraction of 1 the hold cap is that long, longer than any burst or quiet gap below.
LONG_BATCH_TOKENS = 250
# Re-sends 35 ms apart, delay 20 ms: more than one delay apart (a one-delay quiet gap cuts the
# batch after the first) and 25 ms under ADAPTIVE_BURST_QUIET delays, for a loaded machine.
BURST_DELAY_S = 0.020
BURST_GAP_S = 0.035
BURST_SIZE = 6
# A lone request: one delay (50 ms) and ADAPTIVE_BURST_QUIET delays are far enough apart to
# tell which one it waited.
LONE_DELAY_S = 0.050
EPS = 1e-6


async def _before(
    batcher: Batcher, engine: RecordingEngine, when: str, size: int = BURST_SIZE
) -> None:
    """Run the previous batch ``when`` says, of ``size`` requests (whose clients may re-send),
    and forget it in ``engine.batches``."""
    if when == NO_BATCH:
        return
    sent = time.perf_counter()
    previous = [submit(batcher, "previous", max_tokens=LONG_BATCH_TOKENS) for _ in range(size)]
    for job in previous:
        await finished(job)
    if when == LONG_AFTER:
        # The hold cap is the batch's duration (hold fraction 1), shorter than this wait.
        await asyncio.sleep(1.5 * (time.perf_counter() - sent))
    engine.batches.clear()


@pytest.mark.parametrize(
    ("policy", "when", "one_batch"),
    [
        (ADAPTIVE_POLICY, RIGHT_AFTER, True),
        (ADAPTIVE_POLICY, LONG_AFTER, False),
        (TRITON_POLICY, RIGHT_AFTER, False),
    ],
)
async def test_resends_right_after_a_batch_share_one_under_adaptive(
    registry: CollectorRegistry,
    stoppable: list[Batcher],
    policy: str,
    when: str,
    one_batch: bool,
) -> None:
    # Right after a batch, adaptive closes a batch after ADAPTIVE_BURST_QUIET delays without a
    # new request (60 ms), so re-sends 35 ms apart all land in one. Long after the last batch
    # the quiet gap is one delay, and triton always starts one delay after the oldest request:
    # the first batch is partial.
    assert BURST_DELAY_S < BURST_GAP_S < ADAPTIVE_BURST_QUIET * BURST_DELAY_S
    batcher, engine = await make_batcher(
        registry,
        max_batch_size=4 * BURST_SIZE,  # never full: the quiet gap alone closes the batch
        max_batch_delay_s=BURST_DELAY_S,
        batch_workers=1,
        policy=policy,
        adaptive_hold_fraction=1.0,
    )
    stoppable.append(batcher)
    await _before(batcher, engine, when)
    jobs = await _burst(batcher, BURST_SIZE, BURST_GAP_S)
    for job in jobs:
        await finished(job)
    if one_batch:
        assert engine.batches == [BURST_SIZE]
    else:
        assert len(engine.batches) >= 2 and engine.batches[0] < BURST_SIZE, engine.batches


@pytest.mark.parametrize(
    ("policy", "when", "previous", "waits_burst_quiet"),
    [
        (ADAPTIVE_POLICY, NO_BATCH, 0, False),
        (ADAPTIVE_POLICY, LONG_AFTER, 2, False),
        (ADAPTIVE_POLICY, RIGHT_AFTER, 2, True),
        # A lone closed-loop user: its next request is all the ended batch's clients.
        (ADAPTIVE_POLICY, RIGHT_AFTER, 1, False),
        (TRITON_POLICY, RIGHT_AFTER, 2, False),
    ],
)
async def test_a_lone_request_waits_one_delay_unless_it_follows_a_batch(
    registry: CollectorRegistry,
    stoppable: list[Batcher],
    policy: str,
    when: str,
    previous: int,
    waits_burst_quiet: bool,
) -> None:
    # A request that comes long after the last batch finished (or before any) starts one delay
    # after it arrived, as under triton: the burst quiet gap must not add to idle TTFT. Right
    # after a batch, adaptive holds it ADAPTIVE_BURST_QUIET delays for the other re-sends (the
    # hold cap, a whole previous batch, allows it); triton never holds longer than one delay.
    batcher, engine = await make_batcher(
        registry,
        max_batch_size=8,
        max_batch_delay_s=LONE_DELAY_S,
        batch_workers=1,
        policy=policy,
        adaptive_hold_fraction=1.0,
    )
    stoppable.append(batcher)
    await _before(batcher, engine, when, previous)
    job = submit(batcher, "lone")
    await finished(job)
    wait = job.queue_wait_s
    assert wait is not None
    # The batcher never starts a batch before it is due (EPS: float rounding of the sums);
    # a late timer is what the margin of the upper bound is for.
    assert wait >= LONE_DELAY_S - EPS
    if waits_burst_quiet:
        assert wait >= ADAPTIVE_BURST_QUIET * LONE_DELAY_S - EPS
    else:
        assert wait < (1 + ADAPTIVE_BURST_QUIET) / 2 * LONE_DELAY_S


async def test_a_batch_ending_on_another_worker_does_not_cut_the_burst(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    # Two workers: a short batch ends and its clients re-send, 35 ms apart, while a long batch
    # still runs on the other worker. When that one ends mid-burst, its clients are about to
    # re-send too: the forming batch must keep waiting, not leave as a partial batch.
    batcher, engine = await make_batcher(
        registry,
        max_batch_size=8 * BURST_SIZE,
        max_batch_delay_s=BURST_DELAY_S,
        batch_workers=2,
        policy=ADAPTIVE_POLICY,
        adaptive_hold_fraction=2.0,  # the cap (2 x the short batch, ~0.5 s) outlasts the burst
    )
    stoppable.append(batcher)
    # The batches hold more clients than re-send below: their re-sends are still awaited.
    long_batch = [submit(batcher, "long", max_tokens=LONG_BATCH_TOKENS) for _ in range(3)]
    long_done = asyncio.ensure_future(asyncio.gather(*(finished(j) for j in long_batch)))
    await asyncio.sleep(2 * BURST_DELAY_S)  # the long batch has started
    short = [submit(batcher, "short", max_tokens=LONG_BATCH_TOKENS // 2) for _ in range(16)]
    for job in short:
        await finished(job)
    assert not long_done.done()
    engine.batches.clear()
    jobs: list[Job] = []
    while not long_done.done():
        jobs.append(submit(batcher, f"p{len(jobs)}"))
        await asyncio.sleep(BURST_GAP_S)
    jobs += await _burst(batcher, 2, BURST_GAP_S)  # the long batch's clients re-sending
    await long_done
    for job in jobs:
        await finished(job)
    assert engine.batches == [len(jobs)]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_policy"):
        ServiceSettings(batch_policy="fifo")
