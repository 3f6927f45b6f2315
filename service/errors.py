"""One error hierarchy for tokenbooth, mapped to OpenAI-style HTTP error bodies in one place.

Every error carries a human ``detail``; API errors also carry the HTTP status, the OpenAI
``type``, the offending ``param`` (field name) and a stable machine ``code`` from
:class:`ErrorCode`. The code doubles as the ``error_type`` label of the request counter, so
the label's values are this enum's members and nothing a client can make up.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final

import msgspec

__all__ = [
    "BODY_TOO_LARGE_MESSAGE",
    "APIError",
    "AuthenticationError",
    "BodyTimeoutError",
    "DrainingError",
    "EngineError",
    "ErrorCode",
    "InvalidRequestError",
    "MissingDependencyError",
    "ModelBuildError",
    "ModelNotFoundError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RequestTimeoutError",
    "ServerError",
    "TokenboothError",
    "UnprocessableError",
    "UnsupportedMediaTypeError",
    "from_validation_error",
]


class ErrorCode(StrEnum):
    """Every machine ``code`` the service returns or records; the ``error_type`` label values."""

    # 400 / 422: the request itself is wrong.
    INVALID_REQUEST = "invalid_request"
    INVALID_BODY = "invalid_body"
    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    UNSUPPORTED_N = "unsupported_n"
    UNSUPPORTED_ECHO = "unsupported_echo"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    MAX_TOKENS_TOO_LARGE = "max_tokens_too_large"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    BODY_TOO_LARGE = "body_too_large"
    MODEL_NOT_FOUND = "model_not_found"
    INVALID_API_KEY = "invalid_api_key"
    TOO_MANY_MESSAGES = "too_many_messages"
    # Connection phases (service.connections and the body read): the client was too slow.
    HEADER_TIMEOUT = "header_timeout"
    HEADER_TOO_LARGE = "header_too_large"
    BODY_TIMEOUT = "body_timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    # Framework-level HTTP errors outside the generation routes (no metric label).
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    HTTP_ERROR = "http_error"
    # 429 / 503: load shedding and lifecycle.
    QUEUE_FULL = "queue_full"
    DRAINING = "draining"
    NOT_READY = "not_ready"
    # How an admitted request can end other than stop/length.
    CLIENT_DISCONNECTED = "client_disconnected"
    WRITE_TIMEOUT = "write_timeout"  # the client stopped reading its response
    SHUTDOWN = "shutdown"
    REQUEST_TIMEOUT = "request_timeout"
    ENGINE_ERROR = "engine_error"
    TOKEN_ERROR = "token_error"
    INTERNAL_ERROR = "internal_error"


class TokenboothError(Exception):
    """Base of every error tokenbooth raises on purpose."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ModelBuildError(TokenboothError):
    """A model could not be located, converted or loaded."""


class MissingDependencyError(TokenboothError):
    """An optional dependency is missing; the message names the extra or package to install."""

    def __init__(self, package: str, extra: str | None = None, purpose: str = "") -> None:
        hint = f"pip install 'tokenbooth[{extra}]'" if extra else f"pip install {package}"
        what = f" for {purpose}" if purpose else ""
        super().__init__(f"package {package!r} is required{what}; install it with: {hint}")
        self.package = package
        self.extra = extra


class EngineError(TokenboothError):
    """The inference engine failed while generating."""


class APIError(TokenboothError):
    """An error returned to an API client as ``{"error": {message, type, param, code}}``."""

    status_code: int = 400
    error_type: str = "invalid_request_error"
    default_code: ErrorCode = ErrorCode.INVALID_REQUEST

    def __init__(
        self,
        detail: str,
        *,
        param: str | None = None,
        code: ErrorCode | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.param = param
        self.code: ErrorCode = code or self.default_code
        self.headers = headers or {}


class InvalidRequestError(APIError):
    """400: the request is well-formed JSON but asks for something invalid."""


class UnprocessableError(APIError):
    """422: a field has the wrong type or a required one is missing."""

    status_code = 422
    default_code = ErrorCode.INVALID_BODY


class UnsupportedMediaTypeError(APIError):
    """415: the body is not declared ``application/json``.

    Refusing other types forces a browser to send a CORS preflight before it can POST to an
    unauthenticated local server.
    """

    status_code = 415
    default_code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class AuthenticationError(APIError):
    """401: missing or wrong API key."""

    status_code = 401
    error_type = "authentication_error"
    default_code = ErrorCode.INVALID_API_KEY


class ModelNotFoundError(APIError):
    """404: the requested model is not served here."""

    status_code = 404
    default_code = ErrorCode.MODEL_NOT_FOUND


BODY_TOO_LARGE_MESSAGE: Final = "request body is larger than this server's limit"


class PayloadTooLargeError(APIError):
    """413: the request body exceeds the configured limit."""

    status_code = 413
    default_code = ErrorCode.BODY_TOO_LARGE

    def __init__(
        self,
        detail: str = BODY_TOO_LARGE_MESSAGE,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail, headers=headers)


class QueueFullError(APIError):
    """429: the admission queue is full; retry after ``Retry-After`` seconds."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = ErrorCode.QUEUE_FULL


class DrainingError(APIError):
    """503: the server is draining or not ready and accepts no new work."""

    status_code = 503
    error_type = "server_error"
    default_code = ErrorCode.DRAINING

    def __init__(
        self,
        detail: str = "server is draining; retry on another replica",
        *,
        code: ErrorCode | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail, code=code, headers=headers)


class ServerError(APIError):
    """500: the engine or the server failed while handling an admitted request."""

    status_code = 500
    error_type = "server_error"
    default_code = ErrorCode.ENGINE_ERROR


class BodyTimeoutError(APIError):
    """408: the request body did not arrive within ``body_timeout_s``."""

    status_code = 408
    default_code = ErrorCode.BODY_TIMEOUT


class RequestTimeoutError(APIError):
    """504: the request did not finish within the per-request timeout."""

    status_code = 504
    error_type = "timeout_error"
    default_code = ErrorCode.REQUEST_TIMEOUT


# msgspec's wording of a failed ``Meta`` constraint, e.g. "Expected `int` >= 1" or "Expected
# `array` of length <= 4"; anything else (wrong type, missing field) is a 422.
_CONSTRAINT = re.compile(
    r"Expected `(?P<kind>\w+)`(?P<length> of length)? (?P<op>[<>]=?) (?P<n>\S+)"
)
_ENUM = re.compile(r"Invalid enum value (?P<value>.+)")
_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_WORDS = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}


def from_validation_error(exc: msgspec.ValidationError) -> APIError:
    """Turn msgspec's decode-time validation error into the API error a client gets.

    A value outside a ``Meta`` range or set is a 400 worded like the hand-written checks it
    replaced ("``param`` must be <= 2.0", "must not be empty", "must have at most N items"); a
    wrong type or a missing field stays a 422 with msgspec's own wording. Both name the field
    in ``param`` and in the message.
    """
    text = str(exc)
    at = _PATH.search(text)
    param = at["path"] or None if at else None
    reason = text[: at.start()] if at else text
    field = param or "request body"
    if (hit := _CONSTRAINT.fullmatch(reason)) is not None:
        if hit["length"]:
            unit = "character" if hit["kind"] == "str" else "item"
            if hit["op"] == ">=" and hit["n"] == "1":
                message = f"{field} must not be empty"
            else:
                plural = "" if hit["n"] == "1" else "s"
                message = f"{field} must have {_WORDS[hit['op']]} {hit['n']} {unit}{plural}"
        else:
            message = f"{field} must be {hit['op']} {hit['n']}"
        return InvalidRequestError(message, param=param)
    if (hit := _ENUM.fullmatch(reason)) is not None:
        return InvalidRequestError(f"{field}: unsupported value {hit['value']}", param=param)
    return UnprocessableError(f"invalid request body: {text}", param=param)
