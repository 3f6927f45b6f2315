"""The server view's sample names: what every adapter maps its server's ``/metrics`` onto.

tokenbooth's own names (:mod:`telemetry.names`) are canonical wherever tokenbooth exports the
figure, so a tokenbooth scrape needs no mapping and every report query reads one spelling. The
figures other servers export and tokenbooth does not are named here, once.
"""

from __future__ import annotations

from typing import Final

from telemetry import names

__all__ = ["KV_CACHE_USAGE", "PREEMPTIONS", "PROCESS_SAMPLES", "SERVER_VIEW_NAMES"]

KV_CACHE_USAGE: Final = "server_kv_cache_usage_ratio"
"""Share of the server's KV cache (or of its slots' context) in use, 0..1, a gauge."""
PREEMPTIONS: Final = "server_preemptions_total"
"""Requests the server preempted (vLLM) or retracted (SGLang) to free KV cache, a counter."""

SERVER_VIEW_NAMES: Final[tuple[str, ...]] = (
    names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
    names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
    names.GEN_AI_SERVER_REQUEST_DURATION,
    names.TOKENBOOTH_QUEUE_WAIT,
    names.TOKENBOOTH_INTER_TOKEN_LATENCY,
    names.TOKENBOOTH_PROMPT_TOKENS,
    names.TOKENBOOTH_GENERATION_TOKENS,
    names.TOKENBOOTH_REQUESTS,
    names.TOKENBOOTH_REQUESTS_RUNNING,
    names.TOKENBOOTH_REQUESTS_WAITING,
    KV_CACHE_USAGE,
    PREEMPTIONS,
)
"""Canonical series (histogram or family names) the server view is made of."""

PROCESS_SAMPLES: Final[tuple[str, ...]] = (
    names.PROCESS_CPU_SECONDS,
    names.PROCESS_RESIDENT_MEMORY,
)
"""prometheus_client's process samples, kept from any server that exports them: they show how
much of its host the server used (Python servers export them, C++ and Rust ones do not)."""
