"""Every adapter by kind: the one place a kind's name leads to its adapter."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from loadgen.servers.adapter import Adapter
from loadgen.servers.kinds import SERVER_KINDS, ServerKind
from loadgen.servers.llamacpp import LLAMACPP
from loadgen.servers.openai import OPENAI
from loadgen.servers.sglang import SGLANG
from loadgen.servers.tgi import TGI
from loadgen.servers.tokenbooth import TOKENBOOTH
from loadgen.servers.vllm import VLLM

__all__ = ["ADAPTERS", "adapter_for"]

ADAPTERS: Final[Mapping[ServerKind, Adapter]] = MappingProxyType(
    {a.kind: a for a in (TOKENBOOTH, VLLM, LLAMACPP, TGI, SGLANG, OPENAI)}
)
"""Adapters in :data:`loadgen.servers.kinds.SERVER_KINDS` order (detection tries them so)."""


def adapter_for(kind: str) -> Adapter:
    """The adapter of a kind.

    Raises:
        KeyError: ``kind`` is not one of :data:`loadgen.servers.kinds.SERVER_KINDS`.
    """
    for k, adapter in ADAPTERS.items():
        if k == kind:
            return adapter
    raise KeyError(f"unknown server kind {kind!r}; known: {', '.join(SERVER_KINDS)}")
