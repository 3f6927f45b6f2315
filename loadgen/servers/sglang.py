"""SGLang (``--enable-metrics``): ``sglang:`` metrics with a ``model_name`` label
(``python/sglang/srt/metrics/collector.py``)."""

from __future__ import annotations

from typing import Final

from loadgen.servers.adapter import Adapter, JsonVersion, Rule
from loadgen.servers.canonical import KV_CACHE_USAGE, PREEMPTIONS
from telemetry import names

__all__ = ["SGLANG"]

SGLANG: Final = Adapter(
    kind="sglang",
    metric_prefixes=("sglang:",),
    owned_by=("sglang",),
    # /ready (newer releases) answers 503 until the tokenizer manager is ready; older ones only
    # have /health, so a 404 on /ready falls through to it.
    ready_paths=("/ready", "/health"),
    versions=(JsonVersion("/server_info", "version"), JsonVersion("/get_server_info", "version")),
    rules=(
        Rule(
            names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, ("sglang:time_to_first_token_seconds",), True
        ),
        Rule(names.GEN_AI_SERVER_REQUEST_DURATION, ("sglang:e2e_request_latency_seconds",), True),
        Rule(names.TOKENBOOTH_QUEUE_WAIT, ("sglang:queue_time_seconds",), True),
        # Older releases named the inter-token histogram time_per_output_token_seconds.
        Rule(
            names.TOKENBOOTH_INTER_TOKEN_LATENCY,
            ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
            True,
        ),
        Rule(names.TOKENBOOTH_PROMPT_TOKENS, ("sglang:prompt_tokens_total",)),
        Rule(names.TOKENBOOTH_GENERATION_TOKENS, ("sglang:generation_tokens_total",)),
        Rule(names.TOKENBOOTH_REQUESTS, ("sglang:num_requests_total",)),
        Rule(names.TOKENBOOTH_REQUESTS_RUNNING, ("sglang:num_running_reqs",)),
        Rule(names.TOKENBOOTH_REQUESTS_WAITING, ("sglang:num_queue_reqs",)),
        Rule(KV_CACHE_USAGE, ("sglang:token_usage",)),
        # A retraction is SGLang's preemption: a running request sent back to the queue.
        Rule(PREEMPTIONS, ("sglang:num_retracted_requests_total",)),
    ),
    relabel=(("model_name", names.LABEL_MODEL),),
)
"""SGLang's HTTP server (``python -m sglang.launch_server``)."""
