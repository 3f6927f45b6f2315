"""The replayed batch queue: how closed-loop users spread over batches and replicas, and how
each batch policy forms batches."""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import replace

import pandas as pd
import pytest

from reports.capacity import CapacityModel, ServiceTimes, Window
from reports.capacity.simulate import Formation, Sim, simulate
from service.settings import (
    ADAPTIVE_BURST_QUIET,
    ADAPTIVE_HOLD_FRACTION,
    ADAPTIVE_POLICY,
    TRITON_POLICY,
)

STAGGERED = ServiceTimes(
    base_config_id="staggered",
    label="staggered b8",
    max_batch_size=8,
    max_batch_delay_s=0.005,
    batch_workers=1,
    intra_threads=1,
    prefill_s=(0.020, 0.004),
    step_s=(0.010, 0.002),
    output_tokens=(16, 16),
    prompt_tokens=(40, 60),  # two prompt lengths, 20 tokens apart
    client_overhead_s=0.003,
    fit_points=1,
    fit_replicas=(1,),
    batch_size_range=(1.0, 2.0),
    prefill_rel_rmse=0.0,
    step_rel_rmse=0.0,
)


def _staggered_model(catch: float) -> CapacityModel:
    st = replace(STAGGERED, catch_next_batch_p=catch)
    return CapacityModel(
        services={st.base_config_id: st},
        unfitted={},
        window=Window(duration_s=20.0, warmup_s=2.0),
        balance="least_outstanding",
        device="cuda",
        cpu_cores=None,
        points=pd.DataFrame(),
    )


def test_users_desynchronise_when_the_last_request_misses_the_next_batch() -> None:
    single = STAGGERED.batch_time_s(1)  # 0.024 + 15 x 0.012 = 0.204 s
    assert single == pytest.approx(0.204)
    # Always caught: both users share every batch.
    caught = _staggered_model(1.0).predict("staggered", 1, concurrency=2)
    assert caught.mean_batch_size == 2.0
    # Never caught: once two prompts of different length share a batch, the shorter one's
    # user waits for it, the longer one's misses the next batch, and from then on each runs
    # alone while the other waits: single-request batches back to back.
    missed = _staggered_model(0.0)
    one = missed.predict("staggered", 1, concurrency=2)
    assert one.mean_batch_size == pytest.approx(1.0, abs=0.05)
    assert one.throughput_rps == pytest.approx(1 / single, rel=0.03)
    assert one.throughput_rps < caught.throughput_rps
    # The same with two replicas of two users each: twice the throughput, batches of one.
    two = missed.predict("staggered", 2, concurrency=4)
    assert two.mean_batch_size == pytest.approx(1.0, abs=0.05)
    assert two.throughput_rps == pytest.approx(2 / single, rel=0.03)


# ------------------------------------------------------------------------- batch policies

# Every batch takes the same time whatever its size: 0.1 s prefill + 40 steps of 10 ms.
EVEN = ServiceTimes(
    base_config_id="even",
    label="even b32",
    max_batch_size=32,
    max_batch_delay_s=0.005,
    batch_workers=128,  # a free worker whenever a batch is due: formation alone decides
    intra_threads=1,
    prefill_s=(0.100, 0.0),
    step_s=(0.010, 0.0),
    output_tokens=(41,),
    prompt_tokens=(20,),
    client_overhead_s=0.0,
    fit_points=1,
    fit_replicas=(1,),
    batch_size_range=(1.0, 1.0),
    prefill_rel_rmse=0.0,
    step_rel_rmse=0.0,
)
BURST_GAP_S = 0.003  # arrivals 3 ms apart, under the 5 ms delay: a burst that never pauses


def _replay(st: ServiceTimes, rate: float, window: Window) -> Sim:
    sim, _, _ = simulate(
        st,
        1,
        1.0,
        rate=rate,
        concurrency=None,
        window=window,
        balance="least_outstanding",
        seed=0,
        arrival="constant",
    )
    return sim


def test_triton_cuts_a_burst_at_the_delay_adaptive_holds_it_to_the_cap() -> None:
    window = Window(duration_s=2.0, warmup_s=1.0, max_requests=None)  # warm-up > one batch
    triton = _replay(EVEN, 1 / BURST_GAP_S, window)
    adaptive = _replay(replace(EVEN, batch_policy=ADAPTIVE_POLICY), 1 / BURST_GAP_S, window)
    # Triton: a batch starts 5 ms after its oldest request, holding it and the one 3 ms later.
    assert set(triton.batch_sizes) == {2}
    # Adaptive: no 5 ms pause ever comes, so a batch is held to the cap, the service's share
    # of the replica's recent batch duration after its oldest request, or after the end of the
    # latest batch when its requests waited through it (service.formation.adaptive_due_at):
    # never less than the cap's worth of the burst.
    durations = {round(end - start, 9) for start, end in adaptive.busy}
    assert len(durations) == 1
    cap = max(EVEN.max_batch_delay_s, ADAPTIVE_HOLD_FRACTION * durations.pop())
    assert cap > 2 * BURST_GAP_S  # the test is only meaningful if the cap exceeds the delay
    expected = math.floor(cap / BURST_GAP_S + 1e-9) + 1
    assert min(adaptive.batch_sizes) >= expected  # held from its oldest request at least
    # Later ones from the latest batch's end: the requests that waited through it, plus the
    # cap's worth of the burst after it.
    assert max(adaptive.batch_sizes) >= 2 * expected - 4
    assert expected > 2


def test_adaptive_hold_fraction_comes_from_the_service() -> None:
    assert EVEN.adaptive_hold_fraction == ADAPTIVE_HOLD_FRACTION
    window = Window(duration_s=2.0, warmup_s=1.0, max_requests=None)
    wide = replace(EVEN, batch_policy=ADAPTIVE_POLICY, adaptive_hold_fraction=0.1)
    default = replace(EVEN, batch_policy=ADAPTIVE_POLICY)
    # Twice the hold, about twice the batch: the fraction is what bounds the hold.
    assert min(_replay(wide, 1 / BURST_GAP_S, window).batch_sizes) > max(
        _replay(default, 1 / BURST_GAP_S, window).batch_sizes
    )


def test_a_lone_request_runs_the_same_under_both_policies() -> None:
    # One request every 2 s, each done in 0.5 s: every batch holds one request, which both
    # policies start max_batch_delay after it arrived.
    window = Window(duration_s=20.0, warmup_s=2.0, max_requests=None)
    triton = _replay(EVEN, 0.5, window)
    adaptive = _replay(replace(EVEN, batch_policy=ADAPTIVE_POLICY), 0.5, window)
    assert set(triton.batch_sizes) == {1}
    assert adaptive.send == triton.send
    assert adaptive.first == triton.first
    assert adaptive.finish == triton.finish
    assert adaptive.busy == triton.busy
    start, _ = triton.busy[0]
    assert start == pytest.approx(triton.send[0] + EVEN.max_batch_delay_s)


def test_adaptive_takes_the_oldest_and_the_closest_prompts() -> None:
    prompts = [100, 10, 95, 500, 102, 99]
    triton = Formation(TRITON_POLICY, 3, 0.005, ADAPTIVE_HOLD_FRACTION)
    adaptive = replace(triton, policy=ADAPTIVE_POLICY)
    q = deque(range(6))
    assert triton.take(q, prompts) == [0, 1, 2]
    assert list(q) == [3, 4, 5]
    q = deque(range(6))
    # Oldest (100), then 99 and 102 (distance 1 and 2); the rest wait in arrival order.
    assert adaptive.take(q, prompts) == [0, 5, 4]
    assert list(q) == [1, 2, 3]
    # No more waiting than fit: every one of them, first come, first served.
    q = deque([3, 1, 2])
    assert adaptive.take(q, prompts) == [3, 1, 2]
    assert not q


def test_adaptive_due_time() -> None:
    arrive = [0.0, 0.003, 0.006]
    triton = Formation(TRITON_POLICY, 8, 0.005, 0.05)
    adaptive = replace(triton, policy=ADAPTIVE_POLICY)
    assert triton.due_at([0, 1, 2], arrive, [1.0]) == pytest.approx(0.005)
    # No finished batch yet: held at most the delay, like the batcher.
    assert adaptive.due_at([0, 1, 2], arrive, []) == pytest.approx(0.005)
    # 5 % of a 1 s recent mean: 50 ms cap; the newest arrived at 6 ms, so due at 11 ms.
    assert adaptive.due_at([0, 1, 2], arrive, [0.5, 1.5]) == pytest.approx(0.011)
    # Cap below the quiet time: 5 % of 0.16 s is 8 ms.
    assert adaptive.due_at([0, 1, 2], arrive, [0.16]) == pytest.approx(0.008)


def test_adaptive_due_time_after_a_batch_ended() -> None:
    delay = 0.005
    triton = Formation(TRITON_POLICY, 8, delay, 0.05)
    adaptive = replace(triton, policy=ADAPTIVE_POLICY)
    recent = [1.0]  # 5 % of 1 s: a 50 ms hold cap
    cap = 0.05
    quiet = ADAPTIVE_BURST_QUIET * delay
    queue = [0, 1, 2]
    resends = [1.000, 1.008, 1.016]  # 8 ms apart: more than one delay, less than the quiet
    assert delay < 0.008 < quiet
    # The latest batch ended 1 ms before the first: the newest came within the cap after it,
    # so the batch waits the burst quiet gap after the newest.
    # The ended batch held 8: five of its clients have not re-sent yet.
    assert adaptive.due_at(queue, resends, recent, 0.999, 8) == pytest.approx(1.016 + quiet)
    # All of its clients back (it held 3, or 2): no burst left to wait for, one delay.
    assert adaptive.due_at(queue, resends, recent, 0.999, 3) == pytest.approx(1.016 + delay)
    assert adaptive.due_at(queue, resends, recent, 0.999, 2) == pytest.approx(1.016 + delay)
    # ... and never longer than the cap after the oldest.
    late = [1.000, 1.020, 1.040]
    assert 1.040 + quiet > 1.000 + cap
    assert adaptive.due_at(queue, late, recent, 0.999, 8) == pytest.approx(1.000 + cap)
    # Long before (more than the cap before the newest), or no batch ended yet: one delay.
    assert adaptive.due_at(queue, resends, recent, 0.9) == pytest.approx(1.016 + delay)
    assert adaptive.due_at(queue, resends, recent) == pytest.approx(1.016 + delay)
    # Requests that waited through a batch ending now: held the quiet gap from its end for
    # its clients' re-sends, not sent off at once as a partial batch.
    assert adaptive.due_at(queue, resends, recent, 1.020, 8) == pytest.approx(1.020 + quiet)
    # Triton ignores it all: one delay after the oldest.
    for last_done in (0.9, 0.999, 1.020, -math.inf):
        assert triton.due_at(queue, resends, recent, last_done) == pytest.approx(1.000 + delay)


def test_adaptive_groups_prompt_lengths_in_the_replay() -> None:
    # Two prompt lengths 800 tokens apart, batches of 2, one worker, 8 users: a mixed batch
    # forces 800 extra decode steps, a batch of equal prompts runs in one step.
    st = replace(
        EVEN,
        max_batch_size=2,
        batch_workers=1,
        prefill_s=(0.010, 0.0),
        step_s=(0.001, 0.0),
        output_tokens=(2, 2),
        prompt_tokens=(8, 808),
    )
    window = Window(duration_s=20.0, warmup_s=0.0, max_requests=None)

    def mixed_share(policy: str) -> float:
        sim, _, _ = simulate(
            replace(st, batch_policy=policy),
            1,
            1.0,
            rate=None,
            concurrency=8,
            window=window,
            balance="least_outstanding",
            seed=0,
        )
        mixed = [end - start > 0.5 for start, end in sim.busy]
        return sum(mixed) / len(mixed)

    assert mixed_share(TRITON_POLICY) > 0.25  # first come, first served: about half mixed
    assert mixed_share(ADAPTIVE_POLICY) < 0.1


def test_an_unknown_policy_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'fifo'"):
        replace(EVEN, batch_policy="fifo")
    with pytest.raises(ValueError, match="'fifo'"):
        Formation("fifo", 8, 0.005, ADAPTIVE_HOLD_FRACTION)


def test_a_spare_worker_starts_what_the_busy_worker_would_hold() -> None:
    # One worker, batches of 0.5 s, a request every 0.3 s: each second request finds the
    # worker busy. Without a spare it waits for it; with one (its batch nearly empty, as
    # service.formation.worker_available allows) it starts max_batch_delay after it arrived.
    window = Window(duration_s=6.0, warmup_s=1.0, max_requests=None)
    one = replace(EVEN, batch_workers=1)
    alone = _replay(one, 1 / 0.3, window)
    spare = _replay(replace(one, spare_workers=1), 1 / 0.3, window)
    delay = EVEN.max_batch_delay_s + EVEN.prefill_s[0]

    def waits(sim: Sim) -> list[float]:
        return [f - s - delay for s, f in zip(sim.send, sim.first, strict=True)]

    assert max(waits(spare)) == pytest.approx(0.0, abs=1e-6)
    assert max(waits(alone)) > 0.1
    # The spare ran batches beside the regular worker's: two at once at times.
    starts = sorted(spare.busy)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(starts))
