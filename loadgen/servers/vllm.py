"""vLLM: ``vllm:`` metrics labelled ``model_name`` (v1 engine: ``vllm/v1/metrics/loggers.py``)."""

from __future__ import annotations

from typing import Final

from loadgen.servers.adapter import Adapter, JsonVersion, Rule
from loadgen.servers.canonical import KV_CACHE_USAGE, PREEMPTIONS
from telemetry import names

__all__ = ["VLLM"]

VLLM: Final = Adapter(
    kind="vllm",
    metric_prefixes=("vllm:",),
    owned_by=("vllm",),
    # /health answers 200 once the engine is up (the API server starts after the engine).
    ready_paths=("/health",),
    versions=(JsonVersion("/version", "version"),),
    rules=(
        Rule(names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, ("vllm:time_to_first_token_seconds",), True),
        Rule(
            names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
            ("vllm:request_time_per_output_token_seconds",),
            True,
        ),
        Rule(names.GEN_AI_SERVER_REQUEST_DURATION, ("vllm:e2e_request_latency_seconds",), True),
        Rule(names.TOKENBOOTH_QUEUE_WAIT, ("vllm:request_queue_time_seconds",), True),
        # The v1 engine observes every inter-token gap in time_per_output_token_seconds, renamed
        # inter_token_latency_seconds later (both exported during the deprecation).
        Rule(
            names.TOKENBOOTH_INTER_TOKEN_LATENCY,
            ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
            True,
        ),
        Rule(names.TOKENBOOTH_PROMPT_TOKENS, ("vllm:prompt_tokens_total",)),
        Rule(names.TOKENBOOTH_GENERATION_TOKENS, ("vllm:generation_tokens_total",)),
        Rule(names.TOKENBOOTH_REQUESTS, ("vllm:request_success_total",)),
        Rule(names.TOKENBOOTH_REQUESTS_RUNNING, ("vllm:num_requests_running",)),
        Rule(names.TOKENBOOTH_REQUESTS_WAITING, ("vllm:num_requests_waiting",)),
        # gpu_cache_usage_perc is the pre-0.9 name; both are fractions (1 = full) despite "perc".
        Rule(KV_CACHE_USAGE, ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")),
        Rule(PREEMPTIONS, ("vllm:num_preemptions_total",)),
    ),
    relabel=(("model_name", names.LABEL_MODEL), ("finished_reason", names.LABEL_OUTCOME)),
)
"""vLLM's OpenAI-compatible server (``vllm serve``)."""
