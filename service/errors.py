"""One error hierarchy for tokenbooth, mapped to OpenAI-style HTTP error bodies in one place.

Every error carries a human ``detail``; API errors also carry the HTTP status, the OpenAI
``type``, the offending ``param`` (field name) and a stable machine ``code``.
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "AuthenticationError",
    "DrainingError",
    "EngineError",
    "InvalidRequestError",
    "MissingDependencyError",
    "ModelBuildError",
    "ModelNotFoundError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RequestTimeoutError",
    "TokenboothError",
    "UnprocessableError",
]


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
    default_code: str = "invalid_request"

    def __init__(
        self,
        detail: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}


class InvalidRequestError(APIError):
    """400: the request is well-formed JSON but asks for something invalid."""


class UnprocessableError(APIError):
    """422: the body is not valid JSON / UTF-8 or a field has the wrong type."""

    status_code = 422
    default_code = "invalid_body"


class AuthenticationError(APIError):
    """401: missing or wrong API key."""

    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class ModelNotFoundError(APIError):
    """404: the requested model is not served here."""

    status_code = 404
    default_code = "model_not_found"


class PayloadTooLargeError(APIError):
    """413: the request body exceeds the configured limit."""

    status_code = 413
    default_code = "body_too_large"


class QueueFullError(APIError):
    """429: the admission queue is full; retry after ``Retry-After`` seconds."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "queue_full"


class DrainingError(APIError):
    """503: the server is draining or not ready and accepts no new work."""

    status_code = 503
    error_type = "server_error"
    default_code = "unavailable"


class RequestTimeoutError(APIError):
    """504: the request did not finish within the per-request timeout."""

    status_code = 504
    error_type = "timeout_error"
    default_code = "request_timeout"
