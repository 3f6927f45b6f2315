"""The telemetry package: its modules, each with an explicit ``__all__``.

What telemetry may import is an import contract in pyproject.toml (tests/unit/test_layering.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import telemetry

PACKAGE = Path(telemetry.__file__).parent


def test_modules_present() -> None:
    assert {p.name for p in PACKAGE.glob("*.py")} >= {
        "names.py",
        "metrics.py",
        "tracing.py",
        "logging.py",
        "gpu.py",
    }


def test_every_module_declares_all() -> None:
    for module in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        targets = {
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name)
        }
        assert "__all__" in targets, module.name
