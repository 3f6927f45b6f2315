"""OpenAPI helpers: document request bodies that handlers decode themselves."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.spec import Operation

__all__ = ["body_operation", "inline_schema"]


def inline_schema(typ: type[Any]) -> dict[str, Any]:
    """msgspec's JSON schema for ``typ`` with every ``$ref`` inlined (OpenAPI has no ``$defs``)."""
    raw = msgspec.json.schema(typ)
    defs: dict[str, Any] = raw.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(raw)
    return resolved


def body_operation(typ: type[Any]) -> type[Operation]:
    """An ``Operation`` subclass whose OpenAPI entry declares ``typ`` as the JSON request body."""
    schema = inline_schema(typ)

    class _BodyOperation(Operation):
        def to_schema(self) -> dict[str, Any]:
            result = super().to_schema()
            result["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            }
            return result

    _BodyOperation.__name__ = f"{typ.__name__}Operation"
    return _BodyOperation
