"""Workloads: seeded synthetic prompts with token-length distributions, or prompt files.

Synthetic prompts are built with the served model's tokenizer so that ``input_tokens`` means
tokens of that model, not words. Output length is controlled through ``max_tokens`` (plus the
server's ``ignore_eos`` option for fixed-length benchmarks). Prompt files: JSONL of
``{"prompt": ...}`` or ``{"messages": [...]}`` (optionally ``"max_tokens"``), or ShareGPT
JSON, where the first human turn is the prompt and the first reply's length sets max_tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from loadgen.spec import LengthDist, WorkloadSpec
from service.errors import TokenboothError

__all__ = [
    "PromptItem",
    "TokenCounter",
    "WordCounter",
    "WorkloadError",
    "build_workload",
    "load_tokenizer",
    "sample_lengths",
]

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
        from tokenizers import Tokenizer

        return _HFTokenizer(Tokenizer.from_file(str(model_dir / "tokenizer.json")))
    return WordCounter()


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
        return [dist.value] * n
    if dist.dist == "uniform":
        return [int(x) for x in rng.integers(dist.min, dist.max + 1, size=n)]
    values = rng.normal(dist.mean, dist.std, size=n)
    return [int(x) for x in np.clip(np.rint(values), dist.min, dist.max)]


def _synthetic_text(n_tokens: int, counter: TokenCounter, rng: np.random.Generator) -> str:
    # Random common words; then trimmed to exactly n tokens of the model's tokenizer.
    words = rng.choice(len(_WORDS), size=max(4, n_tokens * 2))
    text = " ".join(_WORDS[i] for i in words)
    while counter.count(text) < n_tokens:
        text += " " + text
    return counter.truncate(text, n_tokens)


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
    rng = np.random.default_rng(seed)
    outs = sample_lengths(spec.output_tokens, n, rng)
    if spec.kind == "synthetic":
        ins = sample_lengths(spec.input_tokens, n, rng)
        return [
            PromptItem(
                max_tokens=min(o, max_tokens_cap),
                prompt=_synthetic_text(i, counter, rng),
                input_tokens=i,
            )
            for i, o in zip(ins, outs, strict=True)
        ]
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
