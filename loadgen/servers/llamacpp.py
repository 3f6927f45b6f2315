"""llama.cpp's ``llama-server`` (with ``--metrics``): ``llamacpp:`` metrics, no labels.

It exports token counters and slot gauges, no latency histograms: its server view has no TTFT,
e2e or queue time, and the report says so rather than showing zeros.
"""

from __future__ import annotations

from typing import Final

from loadgen.servers.adapter import Adapter, JsonVersion, Rule, Sum
from loadgen.servers.canonical import KV_CACHE_USAGE
from telemetry import names

__all__ = ["LLAMACPP"]

LLAMACPP: Final = Adapter(
    kind="llamacpp",
    metric_prefixes=("llamacpp:",),
    owned_by=("llamacpp",),
    headers=(("server", "llama.cpp"),),
    # 503 while the model loads, 200 once it serves.
    ready_paths=("/health",),
    # /props carries build_info: "b11434-unknown" from a build without git metadata.
    versions=(JsonVersion("/props", "build_info"),),
    rules=(
        Rule(names.TOKENBOOTH_GENERATION_TOKENS, ("llamacpp:tokens_predicted_total",)),
        Rule(names.TOKENBOOTH_REQUESTS_RUNNING, ("llamacpp:requests_processing",)),
        Rule(names.TOKENBOOTH_REQUESTS_WAITING, ("llamacpp:requests_deferred",)),
        # Exported by builds before the KV-cache API rework only (b11434 has none).
        Rule(KV_CACHE_USAGE, ("llamacpp:kv_cache_usage_ratio",)),
    ),
    # prompt_tokens_total excludes the prompt tokens reused from the slot's cache (a shared
    # system prompt, say); the requests' prompts are both. Builds without the cached counter
    # count the computed ones only.
    sums=(
        Sum(
            names.TOKENBOOTH_PROMPT_TOKENS,
            ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total"),
        ),
    ),
)
"""llama.cpp's HTTP server (``tools/server``)."""
