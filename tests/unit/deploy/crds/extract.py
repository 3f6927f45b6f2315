"""Write the openAPIV3Schema of chosen CRD versions as ``<group>_<kind>.json`` next to this file.

Usage (a CRD file from upstream, as fetched into a git mirror, on stdin)::

    git --git-dir=MIRROR show COMMIT:PATH | python tests/unit/deploy/crds/extract.py KIND:VERSION...

Only the schema is kept (descriptions dropped: they are most of the bytes and no validator reads
them); SOURCES.md records repository, path, commit and version for each file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def _strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _strip_descriptions(v)
            for k, v in node.items()
            # A property may itself be called "description" (a field of the resource).
            if not (k == "description" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_strip_descriptions(v) for v in node]
    return node


def extract(text: str, wanted: dict[str, set[str]]) -> list[Path]:
    """Write one JSON file per wanted kind: ``{"group", "kind", "versions": {v: schema}}``."""
    written: list[Path] = []
    for doc in yaml.safe_load_all(text):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        kind = spec["names"]["kind"]
        if kind not in wanted:
            continue
        versions = {
            v["name"]: _strip_descriptions(v["schema"]["openAPIV3Schema"])
            for v in spec["versions"]
            if v["name"] in wanted[kind] and v.get("served", False)
        }
        missing = wanted[kind] - versions.keys()
        if missing:
            raise SystemExit(f"{kind}: versions {sorted(missing)} not served by this CRD")
        out = HERE / f"{spec['group']}_{kind}.json"
        payload = {"group": spec["group"], "kind": kind, "versions": versions}
        out.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        written.append(out)
    return written


def main(argv: list[str]) -> int:
    wanted: dict[str, set[str]] = {}
    for arg in argv:
        kind, _, version = arg.partition(":")
        wanted.setdefault(kind, set()).add(version)
    written = extract(sys.stdin.read(), wanted)
    if {p.name.split("_", 1)[1].removesuffix(".json") for p in written} != set(wanted):
        raise SystemExit(f"not all of {sorted(wanted)} found")
    for path in written:
        print(path.relative_to(HERE))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
