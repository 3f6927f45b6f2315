"""The replayed batch queue: how closed-loop users spread over batches and replicas."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from reports.capacity import CapacityModel, ServiceTimes, Window

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
