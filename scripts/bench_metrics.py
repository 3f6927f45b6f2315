"""Benchmark ``/metrics`` rendering after a realistic amount of recorded traffic.

Records ``n_requests`` requests into a fresh :class:`telemetry.metrics.ServiceMetrics` (queue
wait, TTFT, ~64 token gaps, request end, one batch per 8 requests, every latency observation
with a trace-id exemplar), registers the process collectors as the service does, then times
:func:`telemetry.metrics.render_metrics` in both formats against the 5 ms scrape budget, with
prometheus_client's own renderers timed interleaved on the same registry as the baseline.

Run from the repository root::

    .venv/bin/python -m scripts.bench_metrics [--requests 1000] [--renders 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from telemetry import names
from telemetry.metrics import ServiceMetrics, register_process_collectors, render_metrics

__all__ = ["TARGET_MS", "main", "run"]

TARGET_MS: Final = 5.0
"""Budget for one ``/metrics`` render; a scrape must not compete with token streaming."""

_OPENMETRICS_ACCEPT: Final = "application/openmetrics-text; version=1.0.0"
_BATCH_EVERY: Final = 8
_GAPS_PER_REQUEST: Final = 64


def _record(metrics: ServiceMetrics, n_requests: int, rng: random.Random) -> int:
    observations = 0
    for i in range(n_requests):
        trace_id = f"{rng.getrandbits(128):032x}"
        metrics.observe_queue_wait(rng.uniform(0.0005, 0.2), trace_id)
        ttft = rng.uniform(0.02, 0.8)
        metrics.observe_first_token(ttft, trace_id)
        gaps = [rng.uniform(0.005, 0.08) for _ in range(_GAPS_PER_REQUEST)]
        for gap in gaps:
            metrics.observe_token_gap(gap, trace_id)
        outcome = rng.choices(
            (names.OUTCOME_STOP, names.OUTCOME_LENGTH, names.OUTCOME_ABORTED, names.OUTCOME_ERROR),
            weights=(70, 25, 4, 1),
        )[0]
        metrics.observe_request_end(
            outcome=outcome,
            error_type="engine_error" if outcome == names.OUTCOME_ERROR else "",
            prompt_tokens=rng.randint(16, 512),
            completion_tokens=len(gaps) + 1,
            duration_s=ttft + sum(gaps),
            ttft_s=ttft,
            trace_id=trace_id,
        )
        observations += 3 + len(gaps)
        if i % _BATCH_EVERY == _BATCH_EVERY - 1:
            metrics.observe_batch(
                size=_BATCH_EVERY,
                formation_delay_s=rng.uniform(0.0, 0.02),
                prefill_s=rng.uniform(0.02, 0.3),
                decode_s=rng.uniform(0.5, 4.0),
            )
            observations += 1
    return observations


def _time_renders(
    registry: CollectorRegistry, accept: str | None, renders: int
) -> tuple[list[float], list[float], int]:
    """Time tokenbooth's renderer and prometheus_client's, interleaved so noise hits both."""
    library = _library_renderer(accept)
    size = 0
    for _ in range(10):  # warm-up: first renders pay for imports and cache fills
        size = len(render_metrics(registry, accept)[0])
        library(registry)
    ours_ms: list[float] = []
    library_ms: list[float] = []
    for _ in range(renders):
        start = time.perf_counter()
        render_metrics(registry, accept)
        middle = time.perf_counter()
        library(registry)
        end = time.perf_counter()
        ours_ms.append((middle - start) * 1000.0)
        library_ms.append((end - middle) * 1000.0)
    return ours_ms, library_ms, size


def _library_renderer(accept: str | None) -> Callable[[CollectorRegistry], bytes]:
    if accept is None:
        return generate_latest
    return lambda registry: bytes(openmetrics.generate_latest(registry))  # type: ignore[no-untyped-call]


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    # Nearest-rank percentile: an observed value, never an interpolation.
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def run(n_requests: int = 1000, *, renders: int = 200, seed: int = 0) -> dict[str, Any]:
    """Record ``n_requests`` requests, then time ``renders`` renders per format.

    Returns:
        Timings in milliseconds (median, p95) per format, their ratio to :data:`TARGET_MS`,
        body sizes, and the mean cost of one recorded observation in microseconds.
    """
    registry = CollectorRegistry()
    register_process_collectors(registry)
    metrics = ServiceMetrics(
        registry,
        model="bench-model",
        revision="bench",
        max_batch_size=_BATCH_EVERY,
        ttft_slo_seconds=0.5,
        tpot_slo_seconds=0.05,
        e2e_slo_seconds=10.0,
    )
    metrics.set_model_info(quantization="int8", device="cpu", compute_type="int8")
    metrics.bind_queue_state(lambda: 3, lambda: 8, lambda: 2)
    rng = random.Random(seed)  # noqa: S311 -- seeded synthetic traffic, not security

    start = time.perf_counter()
    observations = _record(metrics, n_requests, rng)
    record_s = time.perf_counter() - start

    result: dict[str, Any] = {
        "n_requests": n_requests,
        "renders": renders,
        "target_ms": TARGET_MS,
        "record_us_per_observation": record_s / observations * 1e6,
    }
    for label, accept in (("prometheus", None), ("openmetrics", _OPENMETRICS_ACCEPT)):
        timings, library, size = _time_renders(registry, accept, renders)
        median = statistics.median(timings)
        p95 = _p95(timings)
        result[label] = {
            "median_ms": median,
            "p95_ms": p95,
            "median_ratio_to_target": median / TARGET_MS,
            "p95_ratio_to_target": p95 / TARGET_MS,
            "bytes": size,
            "prometheus_client_median_ms": statistics.median(library),
            "prometheus_client_p95_ms": _p95(library),
        }
    return result


def main() -> None:
    """Command-line entry point: print the figures (or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--renders", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON")
    args = parser.parse_args()
    result = run(args.requests, renders=args.renders, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"recorded {result['n_requests']} requests "
        f"({result['record_us_per_observation']:.2f} us per observation)"
    )
    for label in ("prometheus", "openmetrics"):
        r = result[label]
        print(
            f"{label:>11}: median {r['median_ms']:.3f} ms ({r['median_ratio_to_target']:.2f}x of "
            f"{TARGET_MS:g} ms), p95 {r['p95_ms']:.3f} ms ({r['p95_ratio_to_target']:.2f}x), "
            f"{r['bytes']} bytes, {result['renders']} renders; prometheus_client's own "
            f"renderer: median {r['prometheus_client_median_ms']:.3f} ms, "
            f"p95 {r['prometheus_client_p95_ms']:.3f} ms"
        )


if __name__ == "__main__":
    main()
