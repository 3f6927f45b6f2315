"""Validate custom resources against their CRDs' OpenAPI v3 schemas (kept in ``crds/``).

A CRD schema is OpenAPI v3 plus Kubernetes extensions, close to JSON Schema draft 4. It is
turned into plain JSON Schema the way the API server reads it: ``nullable`` admits null,
``x-kubernetes-int-or-string`` admits an integer or a string, and an object that lists its
``properties`` rejects any other field unless ``x-kubernetes-preserve-unknown-fields`` is set
(the server's strict field validation; without it the server silently prunes a misspelt field).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator

__all__ = ["CRD_DIR", "SchemaKey", "crd_errors", "crd_schemas", "to_json_schema"]

CRD_DIR = Path(__file__).resolve().parent / "crds"
SchemaKey = tuple[str, str]  # (apiVersion, kind)

# Fields every embedded object may carry (x-kubernetes-embedded-resource).
_EMBEDDED = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {}}


def _python_pattern(pattern: str) -> str:
    """A Go (RE2) pattern for Python's ``re``: RE2 allows a flag group such as ``(?i)`` mid-way,
    applying to the rest of the pattern; Python only at the start, so scope it explicitly."""
    for flags in ("(?i)", "(?s)", "(?m)"):
        at = pattern.find(flags)
        if at > 0:
            pattern = f"{pattern[:at]}(?{flags[2]}:{pattern[at + len(flags) :]})"
    return pattern


def to_json_schema(node: Any) -> Any:
    """A CRD ``openAPIV3Schema`` (sub)tree as JSON Schema with the API server's semantics."""
    if isinstance(node, list):
        return [to_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key.startswith("x-kubernetes-") or key == "nullable":
            continue
        elif key == "pattern":
            out[key] = _python_pattern(value)
        else:
            out[key] = to_json_schema(value)
    if node.get("x-kubernetes-int-or-string") and "type" not in node and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    if node.get("x-kubernetes-embedded-resource"):
        out["properties"] = {**_EMBEDDED, **out.get("properties", {})}
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


@cache
def crd_schemas() -> dict[SchemaKey, Draft4Validator]:
    """One validator per (apiVersion, kind) of every schema file in ``crds/``."""
    validators: dict[SchemaKey, Draft4Validator] = {}
    for path in sorted(CRD_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for version, schema in data["versions"].items():
            converted = to_json_schema(schema)
            # The API server always admits these at the root; some CRDs (Istio's) omit them.
            converted["properties"] = {**_EMBEDDED, **converted.get("properties", {})}
            Draft4Validator.check_schema(converted)
            key = (f"{data['group']}/{version}", data["kind"])
            validators[key] = Draft4Validator(converted)
    return validators


def crd_errors(obj: dict[str, Any]) -> list[str]:
    """Schema violations of one custom resource, as ``path: message`` lines (empty: valid).

    Raises:
        KeyError: no schema for the object's apiVersion and kind in ``crds/``.
    """
    validator = crd_schemas()[(obj["apiVersion"], obj["kind"])]
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
