"""Capacity model: a batch-service queue fitted from the sweep, simulated for unmeasured loads.

Each replica is the service's dynamic batcher under the configuration's batch policy: requests
queue, a free batch worker takes up to ``max_batch_size`` of them as soon as that many wait or
the batch is due (Triton: ``max_batch_delay`` after the oldest arrived; adaptive: once no
request joined for ``max_batch_delay``, capped at a share of a recent batch's duration, taking
the closest prompt lengths when more wait than fit; :class:`~reports.capacity.simulate.Formation`),
and the batch runs on CTranslate2's static ``generate_batch``: one prefill over the
prompts up to the shortest one, then decode steps, the longer prompts' remaining tokens forced
through the first of them, until its last request is done. The model fits, per base
configuration (what one replica runs), the prefill and decode-step times from the server's own
batch metrics, the client overhead, the closed-loop race between a batch's last request and the
release of its worker, and the CPU the replicas and the load generator need of a shared host.
Predictions replay that queue in a discrete-event simulation over the sweep's measured window
and read p95 TTFT and throughput off the simulated requests as the analysis reads real ones.

One module per part:

* :mod:`~reports.capacity.steps`: decode steps of a static batch, and their timing.
* :mod:`~reports.capacity.results`: the window, fitted service times, predictions, hold-out error.
* :mod:`~reports.capacity.simulate`: the discrete-event replay of one window.
* :mod:`~reports.capacity.host`: CPU contention of replicas sharing a host.
* :mod:`~reports.capacity.race`: the closed-loop batch-catching race, counted in client rows.
* :mod:`~reports.capacity.fit`: one base configuration's service times from its points.
* :mod:`~reports.capacity.model`: :class:`CapacityModel`, predictions and hold-out checks.
* :mod:`~reports.capacity.fit_run`: :func:`fit_analysis`, :func:`fit`, :func:`fit_run_dir`.
* :mod:`~reports.capacity.frames`: the model's data frames for the report's figures.
"""

from reports.capacity.fit_run import fit, fit_analysis, fit_run_dir
from reports.capacity.frames import prediction_frame, scaling_frame
from reports.capacity.host import Host
from reports.capacity.model import ASSUMPTIONS, CapacityModel
from reports.capacity.race import batch_catch_counts
from reports.capacity.results import (
    LOCUST_START_SPREAD_S,
    Holdout,
    Prediction,
    ServiceTimes,
    Window,
)
from reports.capacity.steps import decode_step_table, expected_max, request_steps, step_clock

__all__ = [
    "ASSUMPTIONS",
    "LOCUST_START_SPREAD_S",
    "CapacityModel",
    "Holdout",
    "Host",
    "Prediction",
    "ServiceTimes",
    "Window",
    "batch_catch_counts",
    "decode_step_table",
    "expected_max",
    "fit",
    "fit_analysis",
    "fit_run_dir",
    "prediction_frame",
    "request_steps",
    "scaling_frame",
    "step_clock",
]
