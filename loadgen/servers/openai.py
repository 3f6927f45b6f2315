"""Any other OpenAI-compatible server: recognised by nothing, measured from the client only."""

from __future__ import annotations

from typing import Final

from loadgen.servers.adapter import Adapter

__all__ = ["OPENAI"]

OPENAI: Final = Adapter(kind="openai")
"""The generic kind: default readiness paths, no version, no server view."""
