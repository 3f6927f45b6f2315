"""Engine protocol and the CTranslate2 engine.

An engine runs one batch at a time per call, blocking, in a worker thread owned by the batcher.
It reports every generated token through a per-step callback whose return value stops that
batch index (CTranslate2's ``callback`` contract), so ``max_tokens``, stop strings and client
disconnects end a request early without holding up the rest of its batch.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from service.errors import EngineError, ModelBuildError
from telemetry.logging import log_event

__all__ = [
    "CTranslate2Engine",
    "Engine",
    "EngineInfo",
    "SamplingOptions",
    "StepCallback",
    "StreamDecoder",
    "TextCodec",
    "TokenizerCodec",
    "resolve_device",
]

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int, str, bool], bool]
"""``(batch_index, token_id, token, is_last) -> stop``: called from the engine thread per token."""


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """Options that must be equal for requests to share one ``generate_batch`` call.

    This is the batcher's bucket key. ``temperature == 0`` means greedy decoding.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        """True when decoding is deterministic argmax."""
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What a running engine serves, for ``/v1/models``, metrics and logs."""

    model_name: str
    revision: str
    quantization: str
    device: str
    compute_type: str
    context_length: int
    engine: str
    model_dir: str | None = None
    # Output vocabulary size, the largest top_k the engine accepts; 0 when unknown.
    vocab_size: int = 0


class StreamDecoder(Protocol):
    """Turns generated tokens into text deltas, holding back incomplete UTF-8."""

    def step(self, token_id: int, token: str) -> str:
        """Return the new text this token completes ('' when it completes nothing yet)."""
        ...


class TextCodec(Protocol):
    """Tokenization, streaming detokenization and chat templating for one model."""

    eos_token_ids: frozenset[int]
    # Characters in the longest token (0: unbounded or unknown). A text of n characters has
    # at least n / max_token_chars tokens, which rejects a huge prompt without tokenizing it.
    max_token_chars: int

    def encode(self, text: str) -> list[str]:
        """Token strings the engine consumes (BOS included when the model wants it).

        Special-token text that chat messages carried into a ``render_chat`` result is
        encoded as text; pass that result unchanged.
        """
        ...

    def new_decoder(self) -> StreamDecoder:
        """A fresh incremental decoder for one request."""
        ...

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """Apply the model's chat template with the generation prompt appended."""
        ...


class Engine(Protocol):
    """A text-generation backend the batcher can drive."""

    info: EngineInfo
    codec: TextCodec

    def generate_batch(
        self,
        prompts: Sequence[Sequence[str]],
        options: SamplingOptions,
        max_new_tokens: int,
        on_step: StepCallback,
    ) -> None:
        """Generate for every prompt, reporting each token through ``on_step``. Blocking."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...


def resolve_device(device: str) -> str:
    """Map ``auto`` to ``cuda`` when CTranslate2 sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class _TokenizerDecoder:
    """Incremental detokenizer over ``tokenizers.decoders.DecodeStream``."""

    __slots__ = ("_stream", "_tokenizer")

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int, token: str) -> str:
        piece = self._stream.step(self._tokenizer, token_id)
        return piece or ""


def _max_token_chars(tokenizer: Any) -> int:
    """Characters of text one token can cover at most, for the cheap too-long bound; 0: none.

    Byte-level BPE spells each byte of a token as one character and a text character is at
    least one byte, so the longest vocabulary entry bounds it exactly, provided no normalizer
    rewrites the text first (NFC, for one, can shrink it). Otherwise there is no safe bound.
    """
    model = json.loads(tokenizer.to_str())
    byte_level = any(
        isinstance(part, dict) and "ByteLevel" in json.dumps(part)
        for part in (model.get("pre_tokenizer"), model.get("decoder"))
    )
    if not byte_level or model.get("normalizer") is not None:
        return 0
    return max((len(t) for t in tokenizer.get_vocab()), default=0)


class TokenizerCodec:
    """TextCodec backed by a ``tokenizers.Tokenizer`` and a Jinja chat template."""

    def __init__(
        self,
        tokenizer: Any,
        chat_template: str | None,
        *,
        bos_token: str,
        eos_tokens: Sequence[str],
        add_bos: bool = False,
    ) -> None:
        from service.models.chat import PromptTokenizer

        self._tokenizer = tokenizer
        self._prompts = PromptTokenizer(tokenizer)
        self._chat_template = chat_template
        self._bos = bos_token
        self._eos = list(eos_tokens)
        self._add_bos = add_bos
        ids = [tokenizer.token_to_id(t) for t in self._eos]
        self.eos_token_ids = frozenset(i for i in ids if i is not None)
        self.max_token_chars = _max_token_chars(tokenizer)

    def encode(self, text: str) -> list[str]:
        tokens = self._prompts.tokens(text)
        if self._add_bos and (not tokens or tokens[0] != self._bos):
            tokens.insert(0, self._bos)
        return tokens

    def new_decoder(self) -> StreamDecoder:
        return _TokenizerDecoder(self._tokenizer)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        from service.models import render_chat

        return render_chat(
            self._chat_template,
            messages,
            bos_token=self._bos,
            eos_token=self._eos[0] if self._eos else "",
            add_generation_prompt=True,
            special_tokens=self._prompts.special_tokens,
        )


class CTranslate2Engine:
    """``ctranslate2.Generator`` with per-token callbacks.

    ``batch_workers`` maps to ``inter_threads`` (batches run in parallel, one call per worker
    thread) and ``intra_threads`` to threads inside one batch.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "auto",
        compute_type: str = "default",
        batch_workers: int = 1,
        intra_threads: int = 1,
        served_name: str | None = None,
    ) -> None:
        import ctranslate2

        from service.models import load_model_files

        files = load_model_files(model_dir)
        manifest = files.manifest
        self._device = resolve_device(device)
        if compute_type == "default":
            compute_type = "int8_float16" if self._device == "cuda" else "int8"
        log_event(
            logger,
            "model_load",
            model_dir=str(model_dir),
            device=self._device,
            compute_type=compute_type,
            device_choice=device,
            cuda_devices=ctranslate2.get_cuda_device_count(),
        )
        try:
            self._generator = ctranslate2.Generator(
                str(model_dir),
                device=self._device,
                compute_type=compute_type,
                inter_threads=batch_workers,
                intra_threads=intra_threads,
            )
        except (RuntimeError, ValueError) as exc:
            raise ModelBuildError(f"CTranslate2 could not load {model_dir}: {exc}") from exc
        self._eos_tokens = list(manifest.eos_tokens)
        self.codec: TextCodec = TokenizerCodec(
            files.tokenizer,
            files.chat_template,
            bos_token=manifest.bos_token,
            eos_tokens=manifest.eos_tokens,
            add_bos=bool(getattr(manifest, "add_bos_token", False)),
        )
        self.info = EngineInfo(
            model_name=served_name or manifest.name,
            revision=manifest.revision,
            quantization=manifest.quantization,
            device=self._device,
            compute_type=self._generator.compute_type,
            context_length=manifest.context_length,
            engine="ctranslate2",
            model_dir=str(model_dir),
            vocab_size=manifest.vocab_size,
        )
        self._seed_lock = threading.Lock()

    def generate_batch(
        self,
        prompts: Sequence[Sequence[str]],
        options: SamplingOptions,
        max_new_tokens: int,
        on_step: StepCallback,
    ) -> None:
        import ctranslate2

        def callback(step: Any) -> bool:
            return on_step(step.batch_id, step.token_id, step.token, step.is_last)

        kwargs: dict[str, Any] = {
            "max_length": max_new_tokens,
            "include_prompt_in_result": False,
            "return_end_token": True,
            "callback": callback,
        }
        if options.greedy:
            kwargs["sampling_topk"] = 1
        else:
            kwargs["sampling_temperature"] = options.temperature
            kwargs["sampling_topk"] = options.top_k  # 0: full distribution
            kwargs["sampling_topp"] = options.top_p
        if options.ignore_eos:
            kwargs["end_token"] = []
            kwargs["suppress_sequences"] = [[t] for t in self._eos_tokens]
        batch = [list(p) for p in prompts]
        try:
            if options.seed is not None and not options.greedy:
                # CTranslate2's seed is process-global: seeded batches run one at a time.
                with self._seed_lock:
                    ctranslate2.set_random_seed(options.seed)
                    self._generator.generate_batch(batch, **kwargs)
            else:
                self._generator.generate_batch(batch, **kwargs)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise EngineError(f"generation failed: {exc}") from exc

    def close(self) -> None:
        del self._generator
