"""Batch formation policies on the fake engine: ``triton`` cuts a burst of arrivals into a
partial batch ``max_batch_delay`` after its first request, ``adaptive`` waits for the burst to
end (bounded), and groups prompts of similar length when more wait than fit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from service.batcher import Batcher
from service.job import Job
from service.settings import ADAPTIVE_POLICY, TRITON_POLICY, ServiceSettings
from tests.unit.service.test_batcher import finished, make_batcher, submit


@pytest.fixture
async def stoppable() -> AsyncIterator[list[Batcher]]:
    created: list[Batcher] = []
    yield created
    for batcher in created:
        await batcher.stop()


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


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_policy"):
        ServiceSettings(batch_policy="fifo")
