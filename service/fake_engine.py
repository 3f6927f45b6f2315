"""Deterministic fake engine with configurable TTFT and inter-token latency.

It runs the same batching and streaming paths as the real engine, so tests and the load
generator's self-calibration can measure tokenbooth's own overhead against known latencies.
It is selected with ``engine=fake`` and is never the default.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from service.engine import EngineInfo, SamplingOptions, StepCallback, StreamDecoder, TextCodec

__all__ = ["FAKE_VOCAB", "FakeCodec", "FakeEngine"]

FAKE_VOCAB: tuple[str, ...] = tuple(
    f" {w}"
    for w in (
        "the quick brown fox jumps over a lazy dog while tokens stream",
        "through batches of requests measured to the millisecond",
    )
    for w in w.split()
)
_EOS = "<|endoftext|>"
_WORD = re.compile(r"\s*\S+|\s+")


class _PassThroughDecoder:
    __slots__ = ()

    def step(self, token_id: int, token: str) -> str:
        return "" if token == _EOS else token


class FakeCodec:
    """Word-level codec: one token per whitespace-prefixed word."""

    eos_token_ids: frozenset[int] = frozenset({len(FAKE_VOCAB)})
    max_token_chars: int = 0  # a word of any length is one token

    def encode(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def new_decoder(self) -> StreamDecoder:
        return _PassThroughDecoder()

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        turns = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
        return "".join(turns) + "<|im_start|>assistant\n"


class FakeEngine:
    """Emits ``FAKE_VOCAB`` tokens after ``ttft_s``, then one per ``itl_s``, per batch step.

    All members of a batch receive their token of a step together, as in a real batch. A prompt
    containing ``stop_after:N`` makes the engine end that request with EOS after N tokens, so tests
    can exercise ``finish_reason == "stop"``.
    """

    def __init__(
        self,
        *,
        ttft_s: float = 0.05,
        itl_s: float = 0.01,
        context_length: int = 2048,
        model_name: str = "fake-model",
    ) -> None:
        self._ttft_s = ttft_s
        self._itl_s = itl_s
        self.codec: TextCodec = FakeCodec()
        self.info = EngineInfo(
            model_name=model_name,
            revision="fake",
            quantization="none",
            device="cpu",
            compute_type="none",
            context_length=context_length,
            engine="fake",
            vocab_size=len(FAKE_VOCAB) + 1,  # the words and EOS
        )

    @staticmethod
    def _stop_after(prompt: Sequence[str]) -> int | None:
        if not any("stop_after:" in tok for tok in prompt):
            return None
        for tok in prompt:
            word = tok.strip()
            if word.startswith("stop_after:"):
                try:
                    return int(word.split(":", 1)[1])
                except ValueError:
                    return None
        return None

    def generate_batch(
        self,
        prompts: Sequence[Sequence[str]],
        options: SamplingOptions,
        max_new_tokens: int,
        on_step: StepCallback,
    ) -> None:
        active = set(range(len(prompts)))
        stops = [None if options.ignore_eos else self._stop_after(p) for p in prompts]
        offsets = [len(p) for p in prompts]
        start = time.perf_counter()
        for step in range(max_new_tokens):
            # Sleep to an absolute deadline so per-step latency does not drift.
            deadline = start + self._ttft_s + step * self._itl_s
            delay = deadline - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            for i in sorted(active):
                stop_at = stops[i]
                if stop_at is not None and step >= stop_at:
                    token_id, token = len(FAKE_VOCAB), _EOS
                else:
                    token_id = (offsets[i] + step) % len(FAKE_VOCAB)
                    token = FAKE_VOCAB[token_id]
                is_last = token == _EOS or step == max_new_tokens - 1
                if on_step(i, token_id, token, is_last) or is_last:
                    active.discard(i)
            if not active:
                return

    def close(self) -> None:
        return None
