"""Multi-turn sessions: seeded session plans, and one session's conversation as it grows.

A session (``[workload] kind = "sessions"``) is ``turns`` user messages of ``input_tokens``
tokens each, each answered with up to ``output_tokens``. Every turn sends the conversation so
far as chat messages: the group's shared system prompt when ``prefix_groups`` is set, each
earlier user message followed by the assistant's actual streamed reply, then the new user
message; so the prompt grows turn by turn as in a chat product, and a server with a prefix
cache can reuse the previous turn's prefill. Plans are drawn before a point (pure, seeded);
:class:`SessionState` holds what only the run knows, the replies. Sending, think times and the
closed/open-loop drivers are :meth:`loadgen.users.PointContext.run_session`.

No Locust import: the runner, the workers and the unit tests use this module alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from loadgen.spec import WorkloadSpec
from loadgen.workload import (
    PromptItem,
    TokenCounter,
    prefix_group_draws,
    prefix_texts,
    sample_lengths,
    synthetic_text,
)

__all__ = [
    "NO_SESSION",
    "NO_TURN",
    "SessionPlan",
    "SessionState",
    "TurnPlan",
    "build_sessions",
    "session_id",
    "sessions_needed",
]

NO_SESSION: Final = -1
"""``session`` column of a request outside a session."""
NO_TURN: Final = 0
"""``turn`` column of a request outside a session (turns count from 1)."""

# A seed stream of its own: a sessions workload's draws do not shift the synthetic ones.
_SESSION_STREAM: Final = 0x5E5


@dataclass(frozen=True)
class TurnPlan:
    """One user message of a session: its text, its token count, and the reply's max_tokens."""

    user: str
    user_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class SessionPlan:
    """One session's user messages and its shared system prompt (``None``: no prefix)."""

    turns: tuple[TurnPlan, ...]
    system: str | None = None
    system_tokens: int = 0
    group: int = -1  # prefix group, -1 without prefixes

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a Locust message (distributed workers get their sessions this way)."""
        return {
            "turns": [[t.user, t.user_tokens, t.max_tokens] for t in self.turns],
            "system": self.system,
            "system_tokens": self.system_tokens,
            "group": self.group,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionPlan:
        """The inverse of :meth:`to_dict`."""
        return cls(
            turns=tuple(TurnPlan(str(u), int(n), int(m)) for u, n, m in data["turns"]),
            system=data["system"],
            system_tokens=int(data["system_tokens"]),
            group=int(data["group"]),
        )


def sessions_needed(spec: WorkloadSpec, n_requests: int) -> int:
    """How many session plans cover ``n_requests`` requests (at least 16)."""
    return max(16, int(np.ceil(n_requests / max(1.0, spec.turns.expected))))


def build_sessions(
    spec: WorkloadSpec, counter: TokenCounter, n: int, *, seed: int, max_tokens_cap: int = 1024
) -> list[SessionPlan]:
    """``n`` session plans, reproducible from ``seed``.

    Per session: its number of turns from ``turns``, per turn a user message of
    ``input_tokens`` tokens (counted again: a cut can miss by a token) and a reply limit from
    ``output_tokens``; with ``prefix_groups``, a group drawn at random and its system prompt.
    """
    rng = np.random.default_rng([seed, _SESSION_STREAM])
    n_turns = sample_lengths(spec.turns, n, rng)
    prefixes = prefix_texts(spec, counter, seed=seed) if spec.prefix_groups > 0 else []
    groups = prefix_group_draws(n, len(prefixes), seed=seed) if prefixes else [-1] * n
    prefix_counts = [counter.count(p) for p in prefixes]
    plans = []
    for k in range(n):
        ins = sample_lengths(spec.input_tokens, n_turns[k], rng)
        outs = sample_lengths(spec.output_tokens, n_turns[k], rng)
        turns = []
        for i, o in zip(ins, outs, strict=True):
            text = synthetic_text(i, counter, rng)
            turns.append(TurnPlan(text, counter.count(text), min(o, max_tokens_cap)))
        g = groups[k]
        plans.append(
            SessionPlan(
                turns=tuple(turns),
                system=prefixes[g] if g >= 0 else None,
                system_tokens=prefix_counts[g] if g >= 0 else 0,
                group=g,
            )
        )
    return plans


def session_id(index: int, worker: int = 0) -> int:
    """A session's id in the ``session`` column: its workload index, the worker in the high bits.

    Unique within a run: one process numbers sessions from a run-wide cursor, and each
    distributed worker's ids differ in ``worker << 32``.
    """
    return (worker << 32) | index


@dataclass
class SessionState:
    """One running session: the plan, the turns done, and the history to send back.

    ``history`` holds, per finished turn, the user message and the assistant's reply as it was
    streamed; :meth:`next_item` puts system prompt, history and the next user message together.
    """

    plan: SessionPlan
    session_id: int
    history: list[dict[str, str]] = field(default_factory=list)
    turns_done: int = 0
    history_tokens: int = 0  # the workload's count of history: user tokens + reply tokens

    @property
    def done(self) -> bool:
        """Every turn has been answered (or the session was abandoned)."""
        return self.turns_done >= len(self.plan.turns)

    @property
    def turn(self) -> int:
        """The 1-based number of the next turn."""
        return self.turns_done + 1

    def next_item(self) -> PromptItem:
        """The next turn's request: system prompt, history so far, the new user message.

        Its ``input_tokens`` is the workload's count of every message's content (the chat
        template's own tokens are the server's; its usage is authoritative).
        """
        turn = self.plan.turns[self.turns_done]
        system = self.plan.system
        head = [] if system is None else [{"role": "system", "content": system}]
        messages = (*head, *self.history, {"role": "user", "content": turn.user})
        return PromptItem(
            max_tokens=turn.max_tokens,
            messages=messages,
            input_tokens=self.plan.system_tokens + self.history_tokens + turn.user_tokens,
        )

    def record_reply(self, text: str, tokens: int) -> None:
        """The current turn's reply arrived: keep the exchange for the next turn's history."""
        turn = self.plan.turns[self.turns_done]
        self.history.append({"role": "user", "content": turn.user})
        self.history.append({"role": "assistant", "content": text})
        self.history_tokens += turn.user_tokens + tokens
        self.turns_done += 1

    def abandon(self) -> None:
        """End the session early: a conversation cannot go on without the last reply."""
        self.turns_done = len(self.plan.turns)
