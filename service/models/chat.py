"""Render chat messages into a prompt with a model's Jinja chat template.

The environment matches Hugging Face ``apply_chat_template`` (sandboxed, immutable,
``trim_blocks``/``lstrip_blocks``, ``loopcontrols``, ``tojson``, ``raise_exception``,
``strftime_now``), so templates shipped with models render as they do there.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, NoReturn

import jinja2

from service.errors import ModelBuildError

__all__ = ["render_chat"]


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
) -> str:
    """Render chat messages into a prompt with the model's Jinja chat template.

    Uses a sandboxed, immutable Jinja environment with ``trim_blocks``/``lstrip_blocks`` and
    a ``raise_exception`` helper, like Hugging Face ``apply_chat_template``. Without a
    template, falls back to ``role: content`` lines ending in ``assistant:``.

    Raises:
        ModelBuildError: The template does not compile or raises while rendering.
    """
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
