"""Render chat messages into a prompt with a model's Jinja chat template, and tokenize it.

The environment matches Hugging Face ``apply_chat_template`` (sandboxed, immutable,
``trim_blocks``/``lstrip_blocks``, ``loopcontrols``, ``tojson``, ``raise_exception``,
``strftime_now``), so templates shipped with models render as they do there.

Special-token text inside a message (``<|im_start|>system`` typed by a user) is encoded as
plain text, so a message cannot forge a turn of its own; only the markers the template itself
writes become control tokens. :func:`render_chat` records where messages put such text and
:class:`PromptTokenizer` honours it. Raw completion prompts are left as they are: they are the
caller's whole model input, with no other party's turn to forge.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn

import jinja2

from service.errors import ModelBuildError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["ChatPrompt", "PromptTokenizer", "SpecialTokens", "render_chat"]

# Stand-ins for special-token text while the template renders: Supplementary Private Use
# Area-A, where Unicode assigns nothing, so real text almost never holds them (checked anyway).
_PLACEHOLDER_BASE: Final = 0xF0000
_PLACEHOLDER_END: Final = 0xFFFFE


class SpecialTokens:
    """The special (control) tokens of a vocabulary, found in text as the tokenizer finds them."""

    __slots__ = ("pattern", "tokens")

    def __init__(self, tokens: Iterable[str]) -> None:
        self.tokens: tuple[str, ...] = tuple(
            sorted({t for t in tokens if t}, key=len, reverse=True)
        )
        # Longest first: ``tokenizers`` matches added tokens leftmost-longest.
        self.pattern: re.Pattern[str] | None = (
            re.compile("|".join(map(re.escape, self.tokens))) if self.tokens else None
        )


class ChatPrompt(str):
    """A rendered chat prompt that knows which special-token text came from the messages.

    It is the plain prompt string everywhere (logs, spans, lengths), as ``markupsafe.Markup``
    is; :class:`PromptTokenizer` reads ``literal_spans``, the ``(start, end)`` offsets of
    special-token text the messages supplied, and encodes it as text. String operations return
    a plain ``str`` and so drop the spans: pass the prompt to the tokenizer unchanged.
    """

    literal_spans: tuple[tuple[int, int], ...]

    def __new__(cls, text: str, literal_spans: Sequence[tuple[int, int]] = ()) -> ChatPrompt:
        prompt = super().__new__(cls, text)
        prompt.literal_spans = tuple(literal_spans)
        return prompt


class PromptTokenizer:
    """Tokenize prompts so that special-token text a chat message carried stays text.

    Holds a second copy of the tokenizer with ``encode_special_tokens`` set, rather than
    toggling the shared one per call, so that encoding stays safe from several threads.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = tokenizer
        self._as_text = Tokenizer.from_str(tokenizer.to_str())
        self._as_text.encode_special_tokens = True
        added = tokenizer.get_added_tokens_decoder().values()
        self.special_tokens = SpecialTokens(t.content for t in added if t.special)

    def tokens(self, text: str) -> list[str]:
        """Token strings of ``text``; the ``literal_spans`` of a :class:`ChatPrompt` as text."""
        spans = text.literal_spans if isinstance(text, ChatPrompt) else ()
        pattern = self.special_tokens.pattern
        if not spans or pattern is None:
            # encode_batch releases the GIL while it works (tokenizers 0.23's encode mostly
            # does too; building the token list does not): tokenized on a worker thread, a
            # huge prompt leaves the event loop free.
            tokens: list[str] = self._tokenizer.encode_batch([text], add_special_tokens=False)[
                0
            ].tokens
            return tokens
        # Split only at the template's own special tokens (those outside the spans), the way
        # ``tokenizers`` splits at added tokens before pre-tokenizing each piece on its own;
        # the pieces, spans included, are encoded with special tokens treated as text.
        out: list[str] = []
        piece_start = search_from = 0
        for span_start, span_end in (*spans, (len(text), len(text))):
            for match in pattern.finditer(text, search_from, span_start):
                out += self._text_tokens(text[piece_start : match.start()])
                out.append(match.group())
                piece_start = match.end()
            search_from = span_end
        out += self._text_tokens(text[piece_start:])
        return out

    def _text_tokens(self, piece: str) -> list[str]:
        if not piece:
            return []
        tokens: list[str] = self._as_text.encode_batch([piece], add_special_tokens=False)[0].tokens
        return tokens


def _raise_template_exception(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)  # templates want local time, as in Hugging Face


@functools.lru_cache(maxsize=16)
def _compile_template(template: str) -> jinja2.Template:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_template_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(
    template: str | None,
    messages: list[dict[str, str]],
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
    special_tokens: SpecialTokens | None = None,
) -> ChatPrompt:
    """Render chat messages into a prompt with the model's Jinja chat template.

    Uses a sandboxed, immutable Jinja environment with ``trim_blocks``/``lstrip_blocks`` and
    a ``raise_exception`` helper, like Hugging Face ``apply_chat_template``. Without a
    template, falls back to ``role: content`` lines ending in ``assistant:``. Where the
    messages contain text of ``special_tokens``, the result marks it as literal text.

    Raises:
        ModelBuildError: The template does not compile or raises while rendering.
    """
    pattern = special_tokens.pattern if special_tokens is not None else None
    found = (
        sorted({m.group() for v in _values(messages) for m in pattern.finditer(v)})
        if pattern is not None
        else []
    )
    if pattern is None or not found:
        return ChatPrompt(_render(template, messages, bos_token, eos_token, add_generation_prompt))
    placeholders = _placeholders(
        len(found), [template or "", bos_token, eos_token, *_values(messages)]
    )
    to_placeholder = dict(zip(found, placeholders, strict=True))
    masked = [
        {
            key: pattern.sub(lambda hit: to_placeholder[hit.group()], value)
            for key, value in message.items()
        }
        for message in messages
    ]
    rendered = _render(template, masked, bos_token, eos_token, add_generation_prompt)
    return _restore(rendered, dict(zip(placeholders, found, strict=True)))


def _values(messages: list[dict[str, str]]) -> list[str]:
    return [value for message in messages for value in message.values()]


def _placeholders(count: int, texts: list[str]) -> list[str]:
    """``count`` private-use characters that none of ``texts`` contains."""
    used = set("".join(texts))
    free = (chr(c) for c in range(_PLACEHOLDER_BASE, _PLACEHOLDER_END) if chr(c) not in used)
    chosen = [c for _, c in zip(range(count), free, strict=False)]
    if len(chosen) < count:
        raise ModelBuildError("chat messages use every private-use placeholder character")
    return chosen


def _restore(rendered: str, to_token: dict[str, str]) -> ChatPrompt:
    """Put the special-token text back in place of its placeholders, recording each span."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = last = 0
    for match in re.finditer("[" + "".join(to_token) + "]", rendered):
        parts.append(rendered[last : match.start()])
        length += match.start() - last
        token = to_token[match.group()]
        parts.append(token)
        spans.append((length, length + len(token)))
        length += len(token)
        last = match.end()
    parts.append(rendered[last:])
    return ChatPrompt("".join(parts), spans)


def _render(
    template: str | None,
    messages: list[dict[str, str]],
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool,
) -> str:
    if template is None:
        lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
        if add_generation_prompt:
            lines.append("assistant:")
        return "\n".join(lines)
    try:
        compiled = _compile_template(template)
        rendered: str = compiled.render(
            messages=messages,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except jinja2.TemplateError as exc:
        raise ModelBuildError(f"chat template failed: {exc}") from exc
    return rendered
