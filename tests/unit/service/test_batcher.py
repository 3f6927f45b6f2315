"""The dynamic batcher driven directly on the fake engine, without HTTP: batch formation by
size and by delay, option buckets, cancellation, timeouts, drain, and the job's stop strings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.batcher import Batcher, BatcherConfig
from service.engine import SamplingOptions, StepCallback
from service.errors import DrainingError, ErrorCode, QueueFullError
from service.fake_engine import FakeEngine
from service.job import Finished, Job, Outcome, TextDelta
from service.settings import TRITON_POLICY
from telemetry import names
from telemetry.metrics import ServiceMetrics

LABELS = {names.LABEL_MODEL: "fake-model", names.LABEL_MODEL_REVISION: "fake"}
# Fast enough that a whole test stays well under a second, slow enough to tell phases apart.
TTFT_S = 0.005
ITL_S = 0.002
SAMPLED = SamplingOptions(temperature=0.7)


class RecordingEngine(FakeEngine):
    """The fake engine, remembering the batch size of every ``generate_batch`` call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches: list[int] = []

    def generate_batch(
        self,
        prompts: Sequence[Sequence[str]],
        options: SamplingOptions,
        max_new_tokens: int,
        on_step: StepCallback,
    ) -> None:
        self.batches.append(len(prompts))
        super().generate_batch(prompts, options, max_new_tokens, on_step)


async def make_batcher(
    registry: CollectorRegistry, *, itl_s: float = ITL_S, **config: Any
) -> tuple[Batcher, RecordingEngine]:
    engine = RecordingEngine(ttft_s=TTFT_S, itl_s=itl_s)
    # Triton's semantics unless a test asks for another policy: these tests pin them down.
    cfg = BatcherConfig(
        **{"max_batch_size": 4, "max_batch_delay_s": 0.0, "policy": TRITON_POLICY, **config}
    )
    metrics = ServiceMetrics(
        registry, model="fake-model", revision="fake", max_batch_size=cfg.max_batch_size
    )
    batcher = Batcher(engine, cfg, metrics)
    await batcher.start()
    return batcher, engine


def submit(
    batcher: Batcher,
    prompt: str = "hi",
    *,
    max_tokens: int = 3,
    options: SamplingOptions = SAMPLED,
    stop: tuple[str, ...] = (),
) -> Job:
    with batcher.admission():
        tokens = batcher.engine.codec.encode(prompt)
        job = Job(
            request_id=f"req-{prompt}",
            prompt_tokens=tokens,
            options=options,
            max_tokens=max_tokens,
            stop=stop,
            arrival=time.perf_counter(),
        )
        return batcher.submit(job)


async def finished(job: Job, limit_s: float = 2.0) -> Finished:
    async def last() -> Finished:
        async for ev in job.events():
            if isinstance(ev, Finished):
                return ev
        raise AssertionError("events() ended without Finished")

    return await asyncio.wait_for(last(), limit_s)


# ------------------------------------------------------------------------- batch formation


async def test_full_batch_starts_at_once_without_waiting_for_the_delay(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, engine = await make_batcher(
        registry, max_batch_size=4, max_batch_delay_s=5.0, batch_workers=1
    )
    stoppable.append(batcher)
    jobs = [submit(batcher, f"p{i}") for i in range(3)]
    await asyncio.sleep(0.02)
    # Three of four: the batch waits for a fourth or the (5 s) delay.
    assert engine.batches == [] and batcher.waiting == 3
    jobs.append(submit(batcher, "p3"))
    assert batcher.waiting == 0 and batcher.running == 4  # formed synchronously on submit
    for job in jobs:
        assert (await finished(job)).outcome is Outcome.LENGTH
    assert engine.batches == [4]
    assert {job.batch_size for job in jobs} == {4}


async def test_partial_batch_starts_max_delay_after_its_first_request(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    delay = 0.1
    batcher, engine = await make_batcher(
        registry, max_batch_size=8, max_batch_delay_s=delay, batch_workers=1
    )
    stoppable.append(batcher)
    first = submit(batcher, "a")
    await asyncio.sleep(delay / 2)
    second = submit(batcher, "b")
    await finished(first)
    await finished(second)
    assert engine.batches == [2]
    assert first.started_at is not None and first.started_at == second.started_at
    # Triton semantics: the delay runs from the first request, not from the latest one
    # (which would make it 1.5 x delay here).
    waited = first.started_at - first.enqueued_at
    assert delay <= waited < delay * 1.4
    assert second.started_at - second.enqueued_at < delay
    formation = registry.get_sample_value(names.TOKENBOOTH_BATCH_FORMATION_DELAY + "_sum", LABELS)
    assert formation == pytest.approx(waited)


async def test_more_than_a_batch_splits_into_full_batches(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, engine = await make_batcher(
        registry, max_batch_size=2, max_batch_delay_s=5.0, batch_workers=1
    )
    stoppable.append(batcher)
    jobs = [submit(batcher, f"p{i}") for i in range(4)]
    for job in jobs:
        await finished(job)
    # The second pair queued behind the only worker and ran as soon as it was free.
    assert engine.batches == [2, 2]


async def test_different_sampling_options_never_share_a_batch(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, engine = await make_batcher(
        registry, max_batch_size=8, max_batch_delay_s=0.03, batch_workers=2
    )
    stoppable.append(batcher)
    greedy = SamplingOptions(temperature=0.0, top_k=1)
    jobs = [
        submit(batcher, "a", options=greedy),
        submit(batcher, "b", options=SAMPLED),
        submit(batcher, "c", options=greedy),
    ]
    for job in jobs:
        await finished(job)
    assert sorted(engine.batches) == [1, 2]
    assert [job.batch_size for job in jobs] == [2, 1, 2]


# ---------------------------------------------------------------------- cancellation, timeouts


async def test_aborted_running_job_stops_generating_and_frees_its_worker(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, engine = await make_batcher(registry, max_batch_size=1, batch_workers=1)
    stoppable.append(batcher)
    long = submit(batcher, "long", max_tokens=10_000)
    waiting = submit(batcher, "next", max_tokens=2)
    async for ev in long.events():
        if isinstance(ev, TextDelta) and ev.text:
            break
    assert batcher.running == 1 and batcher.waiting == 1
    batcher.abort(long)
    fin = await finished(long)
    assert fin.outcome is Outcome.ABORTED
    assert fin.error_type is ErrorCode.CLIENT_DISCONNECTED
    assert batcher.running == 0
    # The engine ended that index long before its 10 000 tokens, freeing the worker.
    assert (await finished(waiting)).outcome is Outcome.LENGTH
    assert long.generated < 100
    assert engine.batches == [1, 1]


async def test_aborted_queued_job_leaves_the_queue(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, engine = await make_batcher(registry, max_batch_size=4, max_batch_delay_s=5.0)
    stoppable.append(batcher)
    job = submit(batcher)
    assert batcher.waiting == 1
    batcher.abort(job)
    assert (await finished(job)).outcome is Outcome.ABORTED
    assert batcher.waiting == 0 and batcher.in_flight == 0
    await asyncio.sleep(0.01)
    assert engine.batches == []


async def test_job_over_its_deadline_times_out_and_leaves_the_batch(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, _ = await make_batcher(registry, request_timeout_s=0.05, itl_s=0.01)
    stoppable.append(batcher)
    slow = submit(batcher, max_tokens=10_000)
    fin = await finished(slow)
    assert fin.outcome is Outcome.TIMEOUT
    assert fin.error_type is ErrorCode.REQUEST_TIMEOUT
    assert "0.05 s" in fin.detail
    assert slow.finished_at is not None
    assert 0.05 <= slow.finished_at - slow.enqueued_at < 0.25
    assert batcher.running == 0


async def test_a_job_that_finishes_in_time_cancels_its_deadline(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, _ = await make_batcher(registry, request_timeout_s=0.05)
    stoppable.append(batcher)
    job = submit(batcher, max_tokens=2)
    assert (await finished(job)).outcome is Outcome.LENGTH
    await asyncio.sleep(0.07)
    assert job.result is not None and job.result.outcome is Outcome.LENGTH


# ----------------------------------------------------------------------------- admission, drain


async def test_full_queue_refuses_with_retry_after(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, _ = await make_batcher(
        registry, max_batch_size=4, max_batch_delay_s=5.0, max_queue_size=2
    )
    stoppable.append(batcher)
    submit(batcher, "a")
    submit(batcher, "b")
    with pytest.raises(QueueFullError) as excinfo:
        submit(batcher, "c")
    assert excinfo.value.code is ErrorCode.QUEUE_FULL
    assert int(excinfo.value.headers["Retry-After"]) >= 1
    assert batcher.waiting == 2


async def test_drain_finishes_in_flight_jobs_and_refuses_new_ones(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, _ = await make_batcher(registry, max_batch_size=1, batch_workers=1)
    stoppable.append(batcher)
    running = submit(batcher, "a", max_tokens=20)
    queued = submit(batcher, "b", max_tokens=2)
    batcher.draining = True
    with pytest.raises(DrainingError) as excinfo:
        submit(batcher, "c")
    assert excinfo.value.code is ErrorCode.DRAINING
    assert excinfo.value.status_code == 503
    assert batcher.in_flight == 2
    assert (await finished(running)).outcome is Outcome.LENGTH
    assert (await finished(queued)).outcome is Outcome.LENGTH
    assert running.completion_tokens == 20
    assert batcher.in_flight == 0


async def test_stop_aborts_what_is_left_as_shutdown(registry: CollectorRegistry) -> None:
    batcher, _ = await make_batcher(registry, max_batch_size=1, batch_workers=1)
    running = submit(batcher, "a", max_tokens=10_000)
    queued = submit(batcher, "b")
    await batcher.stop()
    for job in (running, queued):
        fin = await finished(job)
        assert (fin.outcome, fin.error_type) == (Outcome.ABORTED, ErrorCode.SHUTDOWN)


# ------------------------------------------------------------------------- tokens and stop strings


async def test_tokens_are_timed_and_counted(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, _ = await make_batcher(registry)
    stoppable.append(batcher)
    job = submit(batcher, "x", max_tokens=5)
    assert (await finished(job)).outcome is Outcome.LENGTH
    assert job.completion_tokens == 5
    assert job.text == " quick brown fox jumps over"
    assert job.ttft_s is not None and job.ttft_s >= TTFT_S
    gaps = registry.get_sample_value(names.TOKENBOOTH_INTER_TOKEN_LATENCY + "_count", LABELS)
    assert gaps == 4
    # The batcher records per-token and per-batch series only; the request's end is the
    # route's to record (service.observe), so the requests counter is untouched here.
    assert (
        registry.get_sample_value(
            names.TOKENBOOTH_REQUESTS,
            {**LABELS, names.LABEL_OUTCOME: names.OUTCOME_LENGTH, names.LABEL_ERROR_TYPE: ""},
        )
        == 0
    )


async def test_eos_ends_with_stop(registry: CollectorRegistry, stoppable: list[Batcher]) -> None:
    batcher, _ = await make_batcher(registry)
    stoppable.append(batcher)
    job = submit(batcher, "go stop_after:2", max_tokens=10)
    assert (await finished(job)).outcome is Outcome.STOP
    assert job.completion_tokens == 2


async def test_stop_string_across_tokens_truncates_and_ends_the_index(
    registry: CollectorRegistry, stoppable: list[Batcher]
) -> None:
    batcher, _ = await make_batcher(registry)
    stoppable.append(batcher)
    # Prompt "x": tokens " quick", " brown", " fox"; "n fo" spans two of them.
    job = submit(batcher, "x", max_tokens=50, stop=("n fo", "zzz"))
    deltas = []
    async for ev in job.events():
        if isinstance(ev, TextDelta):
            deltas.append(ev.text)
        else:
            assert ev.outcome is Outcome.STOP
    assert "".join(deltas) == job.text == " quick brow"
    assert job.generated < 50


def make_job(stop: tuple[str, ...]) -> Job:
    return Job(
        request_id="r",
        prompt_tokens=["x"],
        options=SAMPLED,
        max_tokens=10,
        stop=stop,
        arrival=0.0,
    )


def test_text_that_may_start_a_stop_string_is_held_back() -> None:
    job = make_job(("END",))
    assert job.add_text("hello E") is False
    assert job.text == "hello "  # "E" could begin "END"
    assert job.add_text("Nx") is False
    assert job.text == "hello ENx"  # "ENx" is no stop string after all


def test_earliest_stop_string_wins_whatever_its_list_position() -> None:
    job = make_job(("ick", "qu"))
    assert job.add_text(" quick") is True
    assert job.text == " "


def test_held_back_text_is_delivered_on_a_natural_end_only() -> None:
    natural = make_job(("END",))
    natural.add_text("abc EN")
    assert natural.finish(Finished(Outcome.LENGTH), 1.0) is True
    assert natural.text == "abc EN"
    aborted = make_job(("END",))
    aborted.add_text("abc EN")
    aborted.finish(Finished(Outcome.ABORTED, ErrorCode.CLIENT_DISCONNECTED), 1.0)
    assert aborted.text == "abc "
    # A second finish is ignored: one terminal event per job.
    assert aborted.finish(Finished(Outcome.LENGTH), 2.0) is False
    assert aborted.result is not None and aborted.result.outcome is Outcome.ABORTED


class PoisonEngine(RecordingEngine):
    """Fails any batch holding a prompt with the word "poison", before its first token.

    Stands in for an engine-side failure (as CTranslate2 raised for top_k beyond the
    vocabulary) that a request can trigger and validation did not catch.
    """

    def generate_batch(
        self,
        prompts: Sequence[Sequence[str]],
        options: SamplingOptions,
        max_new_tokens: int,
        on_step: StepCallback,
    ) -> None:
        if any(" poison" in p for p in prompts):
            self.batches.append(len(prompts))
            raise RuntimeError("engine rejected this batch")
        super().generate_batch(prompts, options, max_new_tokens, on_step)


async def test_a_failing_batch_fails_only_the_request_that_broke_it(
    registry: CollectorRegistry,
) -> None:
    """Before: every request sharing the batch ended ``error`` with the one that caused it."""
    engine = PoisonEngine(ttft_s=TTFT_S, itl_s=ITL_S)
    cfg = BatcherConfig(max_batch_size=4, max_batch_delay_s=0.05)
    metrics = ServiceMetrics(registry, model="fake-model", revision="fake", max_batch_size=4)
    batcher = Batcher(engine, cfg, metrics)
    await batcher.start()
    try:
        good = [submit(batcher, f"hello {i}") for i in range(3)]
        bad = submit(batcher, "a poison pill")
        fins = [await finished(job) for job in good]
        assert [f.outcome for f in fins] == [Outcome.LENGTH] * 3
        fin = await finished(bad)
        assert fin.outcome is Outcome.ERROR and fin.error_type is ErrorCode.ENGINE_ERROR
        # One batch of four failed; each job then ran alone, the culprit failing again.
        assert engine.batches[0] == 4 and sorted(engine.batches[1:]) == [1, 1, 1, 1]
        assert batcher.in_flight == 0 and batcher.waiting == 0
    finally:
        await batcher.stop()
