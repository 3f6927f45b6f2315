"""One generation request inside the batcher: its state, its stream of events, its stop strings.

A :class:`Job` is created by the route once a request is valid and tokenized, handed to the
batcher, and read back by the route as :class:`TextDelta` events ending in exactly one
:class:`Finished`. Stop strings are matched here, on decoded text: text that could still be
the start of a stop string is held back until the next piece decides it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from service.errors import ErrorCode
from telemetry import names

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

    from service.engine import SamplingOptions, StreamDecoder

__all__ = ["Finished", "Job", "Outcome", "TextDelta"]


class Outcome(StrEnum):
    """How a request ended; the ``outcome`` label of the requests counter and log field."""

    STOP = names.OUTCOME_STOP
    LENGTH = names.OUTCOME_LENGTH
    ABORTED = names.OUTCOME_ABORTED
    REJECTED = names.OUTCOME_REJECTED
    TIMEOUT = names.OUTCOME_TIMEOUT
    ERROR = names.OUTCOME_ERROR

    @property
    def succeeded(self) -> bool:
        """Whether generation ran to a natural end (a stop or the length limit)."""
        return self in (Outcome.STOP, Outcome.LENGTH)


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New text for the client (may be empty while a stop string is still undecided)."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """Terminal event of a job's stream."""

    outcome: Outcome
    error_type: ErrorCode | None = None
    detail: str = ""


@dataclass(eq=False)
class Job:
    """One generation request inside the batcher.

    Fields written by the engine thread (``generated``, ``engine_done``) are plain attributes;
    every other field is touched only on the event loop.
    """

    request_id: str
    prompt_tokens: list[str]
    options: SamplingOptions
    max_tokens: int
    stop: tuple[str, ...]
    arrival: float
    span_context: SpanContext | None = None
    trace_id: str | None = None
    # --- runtime state ---
    enqueued_at: float = 0.0
    started_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    batch_size: int = 0
    generated: int = 0  # engine thread
    engine_done: bool = False  # engine thread: no more callbacks wanted for this index
    cancelled: bool = False  # loop thread: tell the engine thread to stop this index
    completion_tokens: int = 0
    result: Finished | None = None
    decoder: StreamDecoder | None = None
    timeout_handle: asyncio.TimerHandle | None = None
    _text_parts: list[str] = field(default_factory=list)  # joined once, not per token
    _pending_text: str = ""
    _events: asyncio.Queue[TextDelta | Finished] = field(default_factory=asyncio.Queue)

    @property
    def text(self) -> str:
        """Everything delivered to the client so far (the non-streamed response body)."""
        return "".join(self._text_parts)

    @property
    def prompt_len(self) -> int:
        """Number of prompt tokens."""
        return len(self.prompt_tokens)

    @property
    def ttft_s(self) -> float | None:
        """Server-side time to first token, from HTTP arrival."""
        return None if self.first_token_at is None else self.first_token_at - self.arrival

    @property
    def queue_wait_s(self) -> float | None:
        """Time between admission to the queue and the start of its batch."""
        return None if self.started_at is None else self.started_at - self.enqueued_at

    async def events(self) -> AsyncIterator[TextDelta | Finished]:
        """Yield text deltas, then exactly one ``Finished``."""
        while True:
            ev = await self._events.get()
            yield ev
            if isinstance(ev, Finished):
                return

    def add_text(self, piece: str) -> bool:
        """Append decoded text; deliver what can no longer be part of a stop string.

        Returns:
            True when a stop string was found: the text before it was delivered, the rest
            dropped, and the job should finish with :attr:`Outcome.STOP`.
        """
        pending = self._pending_text + piece
        if not self.stop:
            self._pending_text = ""
            self._deliver(pending)
            return False
        hits = [i for s in self.stop if (i := pending.find(s)) >= 0]
        if hits:
            # The earliest stop string wins, whatever its place in the list.
            self._deliver(pending[: min(hits)])
            self._pending_text = ""
            return True
        keep = len(pending) - _stop_prefix_len(pending, self.stop)
        self._pending_text = pending[keep:]
        self._deliver(pending[:keep])
        return False

    def finish(self, fin: Finished, t: float) -> bool:
        """Record the terminal event and queue it for the reader; False if already finished.

        Held-back text is delivered on a natural end (it was no stop string after all) and
        dropped otherwise.
        """
        if self.result is not None:
            return False
        if self._pending_text and fin.outcome.succeeded:
            self._deliver(self._pending_text)
        self._pending_text = ""
        self.result = fin
        self.finished_at = t
        self.cancelled = True
        if self.timeout_handle is not None:
            self.timeout_handle.cancel()
        self._events.put_nowait(fin)
        return True

    def _deliver(self, text: str) -> None:
        self._text_parts.append(text)
        self._events.put_nowait(TextDelta(text))


def _stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
