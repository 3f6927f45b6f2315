"""Workloads: seeded synthetic prompts with token-length distributions, or prompt files.

Synthetic prompts are built with the served model's tokenizer so that ``input_tokens`` means
tokens of that model, not words: local replicas' own model, and for a remote target what
``[workload] tokenizer`` names (:func:`choose_tokenizer`): the server's tokenize endpoint, a
``tokenizer.json``, or the built-in model's tokenizer when the server has no endpoint (with a
warning, since the server may count differently). Output length is controlled through
``max_tokens`` (plus the server's ``ignore_eos`` option for fixed-length benchmarks). Prompt
files: JSONL of ``{"prompt": ...}`` or ``{"messages": [...]}`` (optionally ``"max_tokens"``), or
ShareGPT JSON, where the first human turn is the prompt and the first reply's length sets
max_tokens.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np

from loadgen.results import Tokenizer
from loadgen.spec import LengthDist, WorkloadSpec
from loadgen.tokenize import probe_tokenizer, server_tokenizer
from service.errors import TokenboothError

__all__ = [
    "FAKE_ENGINE_WORDS",
    "TOKENIZER_DEFAULT",
    "TOKENIZER_SERVER",
    "PromptItem",
    "TokenCounter",
    "TokenizerChoice",
    "TokenizerSource",
    "WordCounter",
    "WorkloadError",
    "build_workload",
    "builtin_tokenizer",
    "choose_tokenizer",
    "load_tokenizer",
    "load_tokenizer_file",
    "prefix_group_draws",
    "prefix_texts",
    "sample_lengths",
    "synthetic_text",
    "with_prefix",
]

logger = logging.getLogger("tokenbooth.loadgen")

TOKENIZER_SERVER: Final = "server"
"""``[workload] tokenizer`` value: the server's own tokenize endpoint, or fail."""
TOKENIZER_DEFAULT: Final = ""
"""``[workload] tokenizer`` default: the server's endpoint if it has one, else the built-in."""

TokenizerSource = Literal["server", "file", "builtin"]
"""What counted prompt tokens (``environment.json``'s ``tokenizer.source``)."""

_WORDS = [
    "time",
    "person",
    "year",
    "way",
    "day",
    "thing",
    "man",
    "world",
    "life",
    "hand",
    "part",
    "child",
    "eye",
    "woman",
    "place",
    "work",
    "week",
    "case",
    "point",
    "government",
    "company",
    "number",
    "group",
    "problem",
    "fact",
    "system",
    "program",
    "question",
    "night",
    "water",
    "story",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "team",
]


class WorkloadError(TokenboothError):
    """A workload file is missing, malformed or empty."""


class TokenCounter(Protocol):
    """Counts and trims text in the served model's tokens."""

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        ...

    def truncate(self, text: str, n: int) -> str:
        """``text`` cut to its first ``n`` tokens."""
        ...


class WordCounter:
    """Whitespace-word tokens: the fake engine's tokenizer, and a fallback for remote targets."""

    _word = re.compile(r"\s*\S+|\s+")

    def count(self, text: str) -> int:
        return len(self._word.findall(text))

    def truncate(self, text: str, n: int) -> str:
        return "".join(self._word.findall(text)[:n])


class _HFTokenizer:
    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def truncate(self, text: str, n: int) -> str:
        enc = self._tok.encode(text, add_special_tokens=False)
        if len(enc.ids) <= n:
            return text
        end = enc.offsets[n - 1][1] if n > 0 else 0
        return text[:end]


def load_tokenizer(model_dir: Path | None) -> TokenCounter:
    """The model's ``tokenizer.json`` as a counter; word counting when there is none."""
    if model_dir is not None and (model_dir / "tokenizer.json").exists():
        return _read_tokenizer_json(model_dir / "tokenizer.json")
    return WordCounter()


def _read_tokenizer_json(path: Path) -> _HFTokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    try:
        return _HFTokenizer(HFTokenizer.from_file(str(path)))
    except Exception as exc:  # tokenizers raises bare Exception for unreadable or bad files
        raise WorkloadError(f"[workload] tokenizer: cannot load {path}: {exc}") from exc


def load_tokenizer_file(path: Path) -> TokenCounter:
    """A ``tokenizer.json`` file, or a Hugging Face model directory's, loaded offline.

    Raises:
        WorkloadError: The path is missing, a directory without ``tokenizer.json``, or not a
            tokenizer ``tokenizers`` can read.
    """
    if not path.exists():
        raise WorkloadError(f"[workload] tokenizer: not found: {path}")
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise WorkloadError(f"[workload] tokenizer: {path} is a directory without tokenizer.json")
    return _read_tokenizer_json(file)


@dataclass(frozen=True)
class TokenizerChoice:
    """The counter a workload is built with, and what the run records about it."""

    counter: TokenCounter
    source: TokenizerSource
    detail: str  # the endpoint, the tokenizer.json, or the built-in model
    warning: str = ""  # why the default fell back to the built-in tokenizer

    def environment(self) -> dict[str, str]:
        """The ``tokenizer`` entry of ``environment.json`` (:class:`loadgen.results.Tokenizer`)."""
        return {
            Tokenizer.SOURCE: self.source,
            Tokenizer.DETAIL: self.detail,
            Tokenizer.WARNING: self.warning,
        }


def choose_tokenizer(
    setting: str,
    *,
    url: str,
    kind: str,
    model: str,
    headers: dict[str, str],
    builtin: Callable[[], tuple[TokenCounter, str]],
    base_dir: Path | None = None,
) -> TokenizerChoice:
    """The tokenizer ``[workload] tokenizer`` names for a remote target.

    Args:
        setting: :data:`TOKENIZER_DEFAULT`, :data:`TOKENIZER_SERVER`, or a path.
        url: The server's base URL (the first of the target's).
        kind: The server's kind (:mod:`loadgen.servers.kinds`, or ``auto``: probe).
        model: The served model's id.
        headers: Sent with every tokenize call.
        builtin: The built-in tokenizer and its description, called only when needed.
        base_dir: What a relative path is relative to (the spec's directory).

    Raises:
        TokenizeError: ``server`` and the server has no usable tokenize endpoint.
        WorkloadError: A path that cannot be loaded.
    """
    if setting == TOKENIZER_SERVER:
        tok = server_tokenizer(url, kind, model=model, headers=headers)
        return TokenizerChoice(tok, "server", tok.describe())
    if setting != TOKENIZER_DEFAULT:
        path = Path(setting).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return TokenizerChoice(load_tokenizer_file(path), "file", str(path))
    found, why = probe_tokenizer(url, kind, model=model, headers=headers)
    if found is not None:
        return TokenizerChoice(found, "server", found.describe())
    counter, detail = builtin()
    warning = (
        f"{url} has no usable tokenize endpoint ({why}); synthetic prompts are measured with "
        f"the built-in tokenizer ({detail}), which may count differently from the server's "
        "(set [workload] tokenizer to the served model's tokenizer.json to match it)"
    )
    logger.warning("[workload] tokenizer: %s", warning)
    return TokenizerChoice(counter, "builtin", detail, warning)


@dataclass(frozen=True)
class PromptItem:
    """One request's content: a prompt or chat messages, and its max_tokens."""

    max_tokens: int
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    input_tokens: int = 0  # the workload's own count (the server's usage is authoritative)

    def body(self, api: str, model: str, *, ignore_eos: bool, temperature: float) -> dict[str, Any]:
        """The OpenAI request body for this item (streaming, with usage)."""
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": self.max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if ignore_eos:
            body["ignore_eos"] = True
        if api == "chat":
            messages = (
                list(self.messages)
                if self.messages is not None
                else [{"role": "user", "content": self.prompt or ""}]
            )
            body["messages"] = messages
        else:
            if self.prompt is not None:
                body["prompt"] = self.prompt
            else:
                body["prompt"] = "\n".join(m["content"] for m in self.messages or ())
        return body


def sample_lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` integer lengths from ``dist``, clipped to [min, max]."""
    if dist.dist == "fixed":
        return [int(dist.value)] * n
    if dist.dist == "uniform":
        return [int(x) for x in rng.integers(int(dist.min), int(dist.max) + 1, size=n)]
    values = rng.normal(dist.mean, dist.std, size=n)
    return [int(x) for x in np.clip(np.rint(values), dist.min, dist.max)]


def _synthetic_text(n_tokens: int, counter: TokenCounter, rng: np.random.Generator) -> str:
    # Random common words; then trimmed to exactly n tokens of the model's tokenizer.
    words = rng.choice(len(_WORDS), size=max(4, n_tokens * 2))
    text = " ".join(_WORDS[i] for i in words)
    while counter.count(text) < n_tokens:
        text += " " + text
    return counter.truncate(text, n_tokens)


def synthetic_text(n_tokens: int, counter: TokenCounter, rng: np.random.Generator) -> str:
    """Random common words cut to ``n_tokens`` tokens of ``counter`` (sessions' turns too)."""
    return _synthetic_text(n_tokens, counter, rng)


# Seed streams of their own, so that adding prefixes leaves a spec's other draws unchanged.
_PREFIX_TEXT_STREAM: Final = 0x9F1
_PREFIX_GROUP_STREAM: Final = 0x9F2
_EXACT_TRIES: Final = 16


def prefix_texts(spec: WorkloadSpec, counter: TokenCounter, *, seed: int) -> list[str]:
    """The ``prefix_groups`` shared system prompts of ``prefix_tokens`` tokens each, seeded.

    A cut can land inside a word that then counts differently on its own; such a draw is
    replaced (up to a few times), so a group's prefix is exactly ``prefix_tokens`` when it can be.
    """
    rng = np.random.default_rng([seed, _PREFIX_TEXT_STREAM])
    out = []
    for _ in range(spec.prefix_groups):
        text = _synthetic_text(spec.prefix_tokens, counter, rng)
        for _ in range(_EXACT_TRIES):
            if counter.count(text) == spec.prefix_tokens:
                break
            text = _synthetic_text(spec.prefix_tokens, counter, rng)
        out.append(text)
    return out


def prefix_group_draws(n: int, groups: int, *, seed: int) -> list[int]:
    """Each of ``n`` requests' (or sessions') prefix group, drawn uniformly with the seed.

    At random, not round robin: cycling through the groups in order is an LRU cache's worst
    case (every group evicted just before its turn comes back when fewer than ``groups`` fit),
    which would measure the access order rather than the cache.
    """
    rng = np.random.default_rng([seed, _PREFIX_GROUP_STREAM])
    return [int(g) for g in rng.integers(0, groups, size=n)]


def with_prefix(item: PromptItem, prefix: str, api: str, counter: TokenCounter) -> PromptItem:
    """``item`` behind a shared prefix: a system message (chat), or prefix + newline + prompt.

    The newline keeps the prefix's tokens intact in the completions prompt: byte-level BPE
    pre-tokenizers split at it, so the prompt's first tokens are the prefix's own.
    """
    user = item.prompt or ""
    if api == "chat":
        return replace(
            item,
            prompt=None,
            messages=({"role": "system", "content": prefix}, {"role": "user", "content": user}),
            input_tokens=counter.count(prefix) + item.input_tokens,
        )
    prompt = f"{prefix}\n{user}"
    return replace(item, prompt=prompt, input_tokens=counter.count(prompt))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    items = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(obj, dict) or not ("prompt" in obj or "messages" in obj):
            raise WorkloadError(f"{path}:{lineno}: expected an object with 'prompt' or 'messages'")
        items.append(obj)
    return items


def _read_sharegpt(path: Path, counter: TokenCounter) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"{path}: invalid JSON: {exc.msg}") from exc
    if not isinstance(data, list):
        raise WorkloadError(f"{path}: ShareGPT data must be a list of conversations")
    items = []
    for conv in data:
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        human = next((t for t in turns if t.get("from") in ("human", "user")), None)
        reply = next((t for t in turns if t.get("from") in ("gpt", "assistant")), None)
        if human is None or reply is None or not human.get("value"):
            continue
        items.append(
            {"prompt": human["value"], "max_tokens": max(1, counter.count(reply.get("value", "")))}
        )
    return items


def build_workload(
    spec: WorkloadSpec, counter: TokenCounter, n: int, *, seed: int, max_tokens_cap: int = 1024
) -> list[PromptItem]:
    """``n`` request items, reproducible from ``seed``."""
    if spec.kind == "trace":
        # A trace fixes each request's lengths and send time; its prompts are built per point.
        raise WorkloadError("a trace workload's prompts come from loadgen.traces.trace_prompts")
    rng = np.random.default_rng(seed)
    outs = sample_lengths(spec.output_tokens, n, rng)
    if spec.kind in ("synthetic", "sessions"):
        # For sessions these are first turns: what the runner's warm-up probe sends.
        ins = sample_lengths(spec.input_tokens, n, rng)
        prompts = [_synthetic_text(i, counter, rng) for i in ins]
        # Counted again, not assumed: a server tokenizer's cut can miss by a token (cached).
        counts = [counter.count(p) for p in prompts]
        missed = sum(c != i for c, i in zip(counts, ins, strict=True))
        if missed:
            logger.warning(
                "%d of %d synthetic prompts could not be cut to their exact token count; "
                "their input_tokens is the tokenizer's count",
                missed,
                n,
            )
        items = [
            PromptItem(max_tokens=min(o, max_tokens_cap), prompt=p, input_tokens=c)
            for p, c, o in zip(prompts, counts, outs, strict=True)
        ]
        if spec.prefix_groups > 0:
            prefixes = prefix_texts(spec, counter, seed=seed)
            groups = prefix_group_draws(n, spec.prefix_groups, seed=seed)
            items = [
                with_prefix(it, prefixes[g], spec.api, counter)
                for it, g in zip(items, groups, strict=True)
            ]
        return items
    path = Path(spec.path)
    if not path.exists():
        raise WorkloadError(f"workload file not found: {path}")
    raw = _read_jsonl(path) if spec.format == "jsonl" else _read_sharegpt(path, counter)
    if not raw:
        raise WorkloadError(f"{path}: no usable prompts")
    order = rng.permutation(len(raw))
    items = []
    for k in range(n):
        obj = raw[order[k % len(raw)]]
        max_tokens = int(obj.get("max_tokens") or outs[k])
        if "messages" in obj:
            msgs: Sequence[dict[str, str]] = obj["messages"]
            text = "\n".join(str(m.get("content", "")) for m in msgs)
            items.append(
                PromptItem(
                    max_tokens=min(max_tokens, max_tokens_cap),
                    messages=tuple(
                        {"role": str(m["role"]), "content": str(m.get("content", ""))} for m in msgs
                    ),
                    input_tokens=counter.count(text),
                )
            )
        else:
            prompt = str(obj["prompt"])
            items.append(
                PromptItem(
                    max_tokens=min(max_tokens, max_tokens_cap),
                    prompt=prompt,
                    input_tokens=counter.count(prompt),
                )
            )
    return items


def _default_model_dir() -> Path | None:
    """The default model if it is already built (its tokenizer counts remote targets' tokens)."""
    from service.models import resolve_model

    return resolve_model(None, "int8", build=False)


FAKE_ENGINE_WORDS: Final = "whitespace words (the fake engine's tokens)"
"""What counts a fake engine's tokens (it generates whitespace-separated words)."""


def builtin_tokenizer(engine: str) -> tuple[TokenCounter, str]:
    """The harness's own tokenizer for a remote target, and what it is."""
    if engine == "fake":
        return WordCounter(), FAKE_ENGINE_WORDS
    model_dir = _default_model_dir()
    if model_dir is None:
        return WordCounter(), "whitespace words (the default model is not built)"
    return load_tokenizer(model_dir), f"the default model's, {model_dir}"
