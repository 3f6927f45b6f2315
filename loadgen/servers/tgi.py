"""Hugging Face Text Generation Inference: ``tgi_`` metrics (``router/src/server.rs``).

TGI has no TTFT histogram and no token counters: prompt and generated tokens come from the sums
of its per-request length histograms, and KV-cache use from the tokens the running batch holds
against the most it may hold.
"""

from __future__ import annotations

from typing import Final

from loadgen.servers.adapter import Adapter, JsonVersion, Ratio, Rule
from loadgen.servers.canonical import KV_CACHE_USAGE
from telemetry import names

__all__ = ["TGI"]

TGI: Final = Adapter(
    kind="tgi",
    metric_prefixes=("tgi_",),
    # Its /v1/models owned_by is the model id: the headers of its generation responses and its
    # metric names give it away instead.
    headers=(("x-compute-type", ""),),
    ready_paths=("/health",),
    versions=(JsonVersion("/info", "version"),),
    rules=(
        Rule(names.GEN_AI_SERVER_REQUEST_DURATION, ("tgi_request_duration",), True),
        Rule(names.TOKENBOOTH_QUEUE_WAIT, ("tgi_request_queue_duration",), True),
        Rule(
            names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
            ("tgi_request_mean_time_per_token_duration",),
            True,
        ),
        Rule(names.TOKENBOOTH_PROMPT_TOKENS, ("tgi_request_input_length_sum",)),
        Rule(names.TOKENBOOTH_GENERATION_TOKENS, ("tgi_request_generated_tokens_sum",)),
        Rule(names.TOKENBOOTH_REQUESTS, ("tgi_request_success_total",)),
        Rule(names.TOKENBOOTH_REQUESTS_RUNNING, ("tgi_batch_current_size",)),
        Rule(names.TOKENBOOTH_REQUESTS_WAITING, ("tgi_queue_size",)),
    ),
    ratios=(Ratio(KV_CACHE_USAGE, "tgi_batch_current_max_tokens", "tgi_batch_max_total_tokens"),),
)
"""TGI's router (``text-generation-launcher``)."""
