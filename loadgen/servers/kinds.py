"""The kinds of OpenAI-compatible server the harness knows, named once."""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["AUTO", "GENERIC", "SERVER_KINDS", "ServerKind"]

ServerKind = Literal["tokenbooth", "vllm", "llamacpp", "tgi", "sglang", "openai"]
"""A server kind; ``openai`` is any other OpenAI-compatible server (client-side view only)."""

SERVER_KINDS: Final[tuple[ServerKind, ...]] = (
    "tokenbooth",
    "vllm",
    "llamacpp",
    "tgi",
    "sglang",
    "openai",
)
AUTO: Final = "auto"
"""``[target] server`` value that detects the kind from the running server."""
GENERIC: Final[ServerKind] = "openai"
"""The kind of a server none of the adapters recognises."""
