"""Structured logs: one JSON object per line, bound to the current request and trace.

Every line has ``ts`` (ISO 8601, UTC, milliseconds), ``level``, ``logger`` and ``event`` (the
formatted message). Inside :func:`bind_request` it also has ``request_id`` and ``trace_id``,
so a log line, a trace and a metric exemplar can be joined. Extra fields go in
``extra={"fields": {...}}`` or through :func:`log_event`; they are emitted as top-level keys.
A field named ``request_id`` or ``trace_id`` overrides the bound value; a field that would
overwrite ``ts``, ``level``, ``logger`` or ``event`` is emitted with a trailing underscore
instead (``level_``). Exceptions appear under ``exc``.

Request text never reaches the log: the request line has no field for it, and values of
fields named like request text (``prompt``, ``messages``, ``content``, ``text``) are replaced
with ``"[redacted]"`` as a backstop.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final, TextIO

from telemetry import names

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "bind_request",
    "configure_logging",
    "current_request_id",
    "current_trace_id",
    "log_event",
    "new_request_id",
]

REDACTED: Final = "[redacted]"
"""Value logged in place of any field that could hold request or response text."""

_TEXT_FIELDS: Final = frozenset({"prompt", "messages", "content", "text"})
# Structural keys a field may not overwrite. request_id / trace_id may be given as fields: an
# explicit value wins over the bound context.
_BASE_KEYS: Final = frozenset(
    {names.LOG_TIMESTAMP, names.LOG_LEVEL, names.LOG_LOGGER, names.LOG_EVENT, "exc", "stack"}
)
# Marks handlers this module installed, so a second configure_logging replaces rather than adds.
_HANDLER_MARK: Final = "_tokenbooth_handler"

_request_id: ContextVar[str | None] = ContextVar("tokenbooth_request_id", default=None)
_trace_id: ContextVar[str | None] = ContextVar("tokenbooth_trace_id", default=None)


def new_request_id() -> str:
    """Return a fresh request id, ``"req-"`` plus 32 hex digits."""
    # 128 random bits without a system call per request (uuid4 reads os.urandom).
    return f"req-{random.getrandbits(128):032x}"


def current_request_id() -> str | None:
    """Return the request id bound by the enclosing :func:`bind_request`, if any."""
    return _request_id.get()


def current_trace_id() -> str | None:
    """Return the trace id bound by the enclosing :func:`bind_request`, if any."""
    return _trace_id.get()


@contextmanager
def bind_request(request_id: str, trace_id: str | None) -> Iterator[None]:
    """Attach ``request_id`` and ``trace_id`` to every log line emitted inside the block.

    Uses context variables, so it follows the request across ``await`` points, into tasks
    created inside the block and into ``asyncio.to_thread`` workers, and is restored on exit.
    """
    request_token = _request_id.set(request_id)
    trace_token = _trace_id.set(trace_id)
    try:
        yield
    finally:
        _trace_id.reset(trace_token)
        _request_id.reset(request_token)


class _ContextFilter(logging.Filter):
    # Captures the context variables on the emitting thread; a formatter could run elsewhere
    # (e.g. behind a QueueHandler) where the request context is gone.
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, names.LOG_REQUEST_ID):
            setattr(record, names.LOG_REQUEST_ID, _request_id.get())
        if not hasattr(record, names.LOG_TRACE_ID):
            setattr(record, names.LOG_TRACE_ID, _trace_id.get())
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record_fields(record: logging.LogRecord) -> dict[str, object]:
    # Bound ids first, then explicit fields (which may override them).
    out: dict[str, object] = {}
    for key in (names.LOG_REQUEST_ID, names.LOG_TRACE_ID):
        value = getattr(record, key, None)
        if value:
            out[key] = value
    fields = getattr(record, "fields", None)
    if not isinstance(fields, Mapping):
        return out
    for key, value in fields.items():
        name = str(key)
        if name in _TEXT_FIELDS:
            value = REDACTED
        if name in _BASE_KEYS:
            name = f"{name}_"
        out[name] = value
    return out


class JsonFormatter(logging.Formatter):
    """Format a record as one compact JSON object (see the module docstring for keys)."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a single JSON line without a trailing newline."""
        payload: dict[str, object] = {
            names.LOG_TIMESTAMP: _timestamp(record),
            names.LOG_LEVEL: record.levelname,
            names.LOG_LOGGER: record.name,
            names.LOG_EVENT: record.getMessage(),
        }
        payload.update(_record_fields(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        # default=str: a stray non-JSON value (Path, Enum) must not lose the whole line.
        return json.dumps(payload, default=str, separators=(",", ":"))


class _TextFormatter(logging.Formatter):
    # Human-readable variant for local runs: same content, "key=value" instead of JSON.
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        parts.extend(f"{k}={v}" for k, v in _record_fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure_logging(
    level: str = "INFO", *, json_format: bool = True, stream: TextIO | None = None
) -> None:
    """Install tokenbooth's handler on the root logger.

    Idempotent: a second call replaces the handler this function installed (so a new level,
    format or stream takes effect) and never adds a duplicate. Handlers installed by others
    are left alone.

    Args:
        level: Root level name, e.g. ``"INFO"`` or ``"DEBUG"``.
        json_format: One JSON object per line; ``False`` gives ``key=value`` text for humans.
        stream: Where to write; defaults to ``sys.stderr`` at call time.

    Raises:
        ValueError: ``level`` is not a known level name.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, _HANDLER_MARK, False):
            root.removeHandler(existing)
            existing.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if json_format else _TextFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)


def log_event(
    logger: logging.Logger, event: str, /, *, level: int = logging.INFO, **fields: object
) -> None:
    """Log ``event`` with structured ``fields`` (names from :mod:`telemetry.names` ``LOG_*``).

    Example:
        ``log_event(log, "request.end", outcome="stop", prompt_tokens=12, completion_tokens=40)``
    """
    logger.log(level, event, extra={"fields": fields}, stacklevel=2)
