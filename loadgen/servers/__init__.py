"""One adapter per server kind: recognise it, wait for it, read its ``/metrics`` as the view.

The harness measures tokenbooth and other OpenAI-compatible servers alike (vLLM, llama.cpp,
TGI, SGLang, or any other as the generic ``openai`` kind). Each kind's :class:`Adapter` says what
identifies it, where it is ready, where it states its version, and how its Prometheus samples
map onto the canonical samples of the server view (:mod:`loadgen.servers.canonical`), which
:mod:`loadgen.scrape` stores and :mod:`loadgen.summary` summarises per point.

Probing a live server (:func:`loadgen.servers.detect.detect`) is the one part that talks HTTP;
it is not imported here, because :mod:`loadgen.spec` imports this package for the kinds and the
report reads specs without an HTTP client.
"""

from __future__ import annotations

from loadgen.servers.adapter import (
    DEFAULT_READY_PATHS,
    Adapter,
    JsonVersion,
    Ratio,
    RawSample,
    Rule,
    Sample,
    Sum,
    has_server_view,
)
from loadgen.servers.canonical import (
    KV_CACHE_USAGE,
    PREEMPTIONS,
    PROCESS_SAMPLES,
    SERVER_VIEW_NAMES,
)
from loadgen.servers.info import ServerInfo
from loadgen.servers.kinds import AUTO, GENERIC, SERVER_KINDS, ServerKind
from loadgen.servers.registry import ADAPTERS, adapter_for

__all__ = [
    "ADAPTERS",
    "AUTO",
    "DEFAULT_READY_PATHS",
    "GENERIC",
    "KV_CACHE_USAGE",
    "PREEMPTIONS",
    "PROCESS_SAMPLES",
    "SERVER_KINDS",
    "SERVER_VIEW_NAMES",
    "Adapter",
    "JsonVersion",
    "Ratio",
    "RawSample",
    "Rule",
    "Sample",
    "ServerInfo",
    "ServerKind",
    "Sum",
    "adapter_for",
    "has_server_view",
]
