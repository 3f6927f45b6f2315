"""What the capacity model works with: the measured window, fitted service times, predictions.

Plain frozen records, shared by the simulation (:mod:`reports.capacity.simulate`), the fit
(:mod:`reports.capacity.fit`) and the model (:mod:`reports.capacity.model`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from loadgen.spec import RunSpec, SLOSpec, SweepSpec
from reports.capacity.steps import decode_step_table, interpolate_steps
from service.settings import ADAPTIVE_HOLD_FRACTION, BATCH_POLICIES, TRITON_POLICY

__all__ = ["LOCUST_START_SPREAD_S", "Holdout", "Prediction", "ServiceTimes", "Window"]

LOCUST_START_SPREAD_S: Final = 0.01
"""Locust spawns a point's users at 100 x users per second: all within 10 ms."""
_HARNESS_RUN: Final = RunSpec()  # the harness's [run] defaults


@dataclass(frozen=True)
class Window:
    """The measured window of one point: warm-up, then ``duration_s`` or ``max_requests``."""

    duration_s: float = _HARNESS_RUN.duration_s
    warmup_s: float = _HARNESS_RUN.warmup_s
    max_requests: int | None = _HARNESS_RUN.max_requests
    request_timeout_s: float = _HARNESS_RUN.request_timeout_s

    @classmethod
    def from_spec(cls, spec: SweepSpec | None) -> Window:
        """The window the harness ran for this spec (its defaults where the spec gives none)."""
        run = spec.run if spec is not None else _HARNESS_RUN
        return cls(
            duration_s=run.duration_s,
            warmup_s=run.warmup_s,
            max_requests=run.max_requests,
            request_timeout_s=run.request_timeout_s,
        )


@dataclass(frozen=True)
class ServiceTimes:
    """Fitted batch service times of one base configuration (what one replica runs).

    Attributes:
        base_config_id: What one replica runs (:attr:`reports.load.Rpt.BASE_CONFIG_ID`).
        label: Its display label.
        max_batch_size: Batcher limit.
        max_batch_delay_s: Batcher delay.
        batch_workers: Batches run in parallel per replica.
        intra_threads: Threads per batch.
        prefill_s: ``(p0, p1)``: prefill of a batch of ``b`` takes ``p0 + p1 b``.
        step_s: ``(s0, s1)``: one decode step with ``a`` sequences still active takes
            ``s0 + s1 a``.
        output_tokens: Measured completion tokens per request (sample).
        client_overhead_s: Client TTFT minus server TTFT.
        fit_points: Points the fit used.
        fit_replicas: Replica counts of those points.
        batch_size_range: Smallest and largest mean batch size seen.
        prefill_rel_rmse: Fit residual relative to the mean prefill.
        step_rel_rmse: Fit residual relative to the mean step.
        notes: Fit caveats.
        user_start_spread_s: Closed loop: users start evenly over this long. Calibrated on the
            measured batch sizes: users that start together share batches for good, users
            spread over Locust's spawn interval settle into separate groups.
        prompt_tokens: Measured prompt tokens of the same requests as ``output_tokens`` (empty:
            not recorded, every prompt the same length).
        decode_steps: :func:`decode_step_table` of the measured lengths.
        catch_next_batch_p: Closed loop: probability that the next request of a batch's last
            user reaches the server before the batch frees its worker
            (:func:`batch_catch_counts`).
        worker_cpu_cores: Measured CPU cores per busy batch worker, the replica's request
            handling included (NaN: not recorded).
        loadgen_cpu_s_per_request: The load generator's CPU seconds per request.
        batch_policy: The batcher's formation policy (``service.settings.BATCH_POLICIES``).
        spare_workers: Workers beyond ``batch_workers`` that start a batch only while the
            running batches are nearly empty (:func:`service.formation.worker_available`).
        adaptive_hold_fraction: Adaptive policy: the longest a batch that is not full is held,
            as a share of the replica's recent batch duration (the service's default; a run
            does not record it, the service does not expose it as a setting).

    Raises:
        ValueError: ``batch_policy`` is not one of the service's policies.
    """

    base_config_id: str
    label: str
    max_batch_size: int
    max_batch_delay_s: float
    batch_workers: int
    intra_threads: int
    prefill_s: tuple[float, float]
    step_s: tuple[float, float]
    output_tokens: tuple[int, ...]
    client_overhead_s: float
    fit_points: int
    fit_replicas: tuple[int, ...]
    batch_size_range: tuple[float, float]
    prefill_rel_rmse: float
    step_rel_rmse: float
    notes: tuple[str, ...] = ()
    user_start_spread_s: float = LOCUST_START_SPREAD_S
    prompt_tokens: tuple[int, ...] = ()
    decode_steps: tuple[tuple[float, float], ...] = ()
    catch_next_batch_p: float = 0.0
    worker_cpu_cores: float = math.nan
    loadgen_cpu_s_per_request: float = 0.0
    batch_policy: str = TRITON_POLICY
    adaptive_hold_fraction: float = ADAPTIVE_HOLD_FRACTION
    spare_workers: int = 0

    def __post_init__(self) -> None:
        if self.batch_policy not in BATCH_POLICIES:
            raise ValueError(
                f"{self.base_config_id}: unknown batch policy {self.batch_policy!r}; "
                f"the service's policies are {', '.join(BATCH_POLICIES)}"
            )

    @property
    def workers(self) -> int:
        """Worker threads per replica that can run a batch: the regular ones and the spares."""
        return self.batch_workers + self.spare_workers

    @property
    def cpu_per_worker(self) -> float:
        """CPU cores one busy batch worker keeps busy, with its replica's own request handling
        (measured; the engine's threads when the run did not record process CPU)."""
        v = self.worker_cpu_cores
        return v if math.isfinite(v) and v > 0 else float(max(self.intra_threads, 1))

    def prompts(self) -> npt.NDArray[np.int64]:
        """Prompt tokens of each sampled request (zeros when the run did not record them)."""
        if len(self.prompt_tokens) == len(self.output_tokens):
            return np.asarray(self.prompt_tokens, dtype=np.int64)
        return np.zeros(len(self.output_tokens), dtype=np.int64)

    def steps(self, b: float) -> tuple[float, float]:
        """Expected decode steps of a batch of ``b``: (longest request, sum over requests)."""
        table = self.decode_steps or decode_step_table(
            self.prompts(), np.asarray(self.output_tokens), self.max_batch_size
        )
        return interpolate_steps(table, b)

    def batch_time_s(self, b: float) -> float:
        """Expected time a batch of ``b`` holds its worker, without contention."""
        longest, total = self.steps(b)
        return (
            self.prefill_s[0]
            + self.prefill_s[1] * b
            + self.step_s[0] * longest
            + self.step_s[1] * total
        )


@dataclass(frozen=True)
class Prediction:
    """Predicted behaviour of ``replicas`` replicas of one configuration at one load.

    Attributes:
        base_config_id: Base configuration.
        replicas: Replica count.
        rate_rps: Offered Poisson rate (NaN for closed loop).
        concurrency: Closed-loop users (NaN for open loop).
        throughput_rps: Requests/s finishing inside the window.
        output_tokens_per_s: Output tokens/s finishing inside the window.
        ttft_p95_s: Client TTFT p95.
        ttft_p50_s: Client TTFT median.
        tpot_p95_s: Time per output token p95.
        e2e_p95_s: End-to-end p95.
        mean_batch_size: Mean executed batch size.
        saturated: Open loop only: the replicas fell behind the offered rate.
        samples: Simulated requests behind the percentiles.
        slowdown: CPU contention factor the prediction's batches ran at (1: none).
    """

    base_config_id: str
    replicas: int
    rate_rps: float
    concurrency: float
    throughput_rps: float
    output_tokens_per_s: float
    ttft_p95_s: float
    ttft_p50_s: float
    tpot_p95_s: float
    e2e_p95_s: float
    mean_batch_size: float
    saturated: bool
    samples: int
    slowdown: float = 1.0

    def meets(self, slo: SLOSpec) -> bool:
        """Whether the prediction meets the SLO's latency terms and keeps up with its load."""
        checks = (
            (slo.ttft_p95_s, self.ttft_p95_s),
            (slo.tpot_p95_s, self.tpot_p95_s),
            (slo.e2e_p95_s, self.e2e_p95_s),
        )
        if self.samples == 0 or self.saturated:
            return False
        return all(limit is None or value <= limit for limit, value in checks)


@dataclass(frozen=True)
class Holdout:
    """Prediction error on measured points the fit did not see.

    Attributes:
        table: One row per predicted point: kind (``leave-one-out`` or ``cross-replica``),
            configuration, replicas, load, measured and predicted throughput and TTFT p95, and
            their relative errors.
        throughput_mape: Mean absolute relative throughput error over all rows.
        ttft_p95_mape: Mean absolute relative TTFT p95 error over all rows.
        by_kind: ``{kind: (throughput MAPE, TTFT p95 MAPE, rows)}``.
    """

    table: pd.DataFrame
    throughput_mape: float
    ttft_p95_mape: float
    by_kind: dict[str, tuple[float, float, int]]
