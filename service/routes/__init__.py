"""HTTP route handlers, thin by design: validate -> submit -> respond.

* :mod:`service.routes.generation`: ``POST /v1/completions`` and ``/v1/chat/completions``.
* :mod:`service.routes.ops`: ``/v1/models``, ``/health/live``, ``/health/ready``, ``/metrics``.
* :mod:`service.routes.sse`: the streamed response type both generation routes return.
* :mod:`service.routes.openapi`: OpenAPI entries for bodies the handlers decode themselves.

What goes on the wire is built in :mod:`service.responses`; how a request ended is recorded in
:mod:`service.observe`.
"""

from service.routes.generation import chat_completions, completions
from service.routes.ops import live, metrics, models, ready

__all__ = ["chat_completions", "completions", "live", "metrics", "models", "ready"]
