"""Spare batch workers: a request that finds every regular worker busy starts at once on a
spare while the running batches are nearly empty, and waits for a regular worker once they hold
a few requests each (the fake engine, without HTTP)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from service.batcher import Batcher
from service.formation import worker_available
from service.settings import SPARE_WORKER_MEAN_BATCH, ServiceSettings
from tests.unit.service.test_batcher import finished, make_batcher, submit


@pytest.mark.parametrize(
    ("busy", "running", "spare", "expected"),
    [
        (1, 16, 0, True),  # a regular worker is free: any batch starts
        (2, 1, 0, False),  # no spare configured
        (2, 2, 1, True),  # one request per running batch: the spare takes one
        (2, 3, 1, True),  # just under two each
        (2, 4, 1, False),  # two each: the cores stay with the running batches
        (2, 32, 1, False),
        (3, 1, 1, False),  # the spare is busy too
        (3, 5, 2, True),  # a second spare: under two each of three
        (3, 6, 2, False),
    ],
)
def test_worker_available(busy: int, running: int, spare: int, expected: bool) -> None:
    assert SPARE_WORKER_MEAN_BATCH == 2.0  # the table above is written for two per batch
    assert worker_available(busy, running, 2, spare) is expected


async def test_a_spare_starts_a_batch_beside_a_small_running_one(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, engine = await make_batcher(
        registry, max_batch_size=4, batch_workers=1, spare_workers=1
    )
    stoppable.append(batcher)
    long = submit(batcher, "long", max_tokens=200)
    await asyncio.sleep(0.02)
    second = submit(batcher, "second", max_tokens=3)
    # 1 request in 1 running batch, under 2 each: the spare runs the second at once.
    assert engine.batches == [1, 1] and batcher.waiting == 0 and batcher.running == 2
    third = submit(batcher, "third", max_tokens=3)
    assert batcher.waiting == 1  # both workers busy
    await finished(second)
    await finished(third)
    assert long.result is None  # the third rode the freed spare, not the long batch's worker
    await finished(long)


async def test_full_running_batches_keep_the_spare_idle(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, engine = await make_batcher(
        registry, max_batch_size=4, max_batch_delay_s=0.01, batch_workers=1, spare_workers=1
    )
    stoppable.append(batcher)
    full = [submit(batcher, f"p{i}", max_tokens=30) for i in range(4)]
    assert engine.batches == [4]
    late = submit(batcher, "late", max_tokens=3)
    await asyncio.sleep(0.05)  # past the batch delay: the late batch is due
    # 4 requests in 1 running batch, 2 each or more: the late one waits for the regular worker.
    assert engine.batches == [4] and batcher.waiting == 1
    for job in full:
        await finished(job)
    await finished(late)
    assert engine.batches == [4, 1]


async def test_without_spares_a_busy_worker_queues(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, engine = await make_batcher(registry, max_batch_size=4, batch_workers=1)
    stoppable.append(batcher)
    first = submit(batcher, "first", max_tokens=30)
    second = submit(batcher, "second", max_tokens=3)
    assert engine.batches == [1] and batcher.waiting == 1
    await finished(first)
    await finished(second)
    assert engine.batches == [1, 1]


def test_spare_workers_is_a_setting() -> None:
    assert ServiceSettings().spare_workers >= 0
    assert ServiceSettings(spare_workers=2).spare_workers == 2
