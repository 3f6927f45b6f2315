"""telemetry is the bottom layer: it must not import service, loadgen or reports."""

from __future__ import annotations

import ast
from pathlib import Path

import telemetry

FORBIDDEN = {"service", "loadgen", "reports"}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_telemetry_imports_nothing_above_it() -> None:
    package = Path(telemetry.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert {p.name for p in modules} >= {
        "names.py",
        "metrics.py",
        "tracing.py",
        "logging.py",
        "gpu.py",
    }
    for module in modules:
        assert not imported_top_levels(module) & FORBIDDEN, module.name


def test_every_module_declares_all() -> None:
    package = Path(telemetry.__file__).parent
    for module in sorted(package.glob("*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        targets = {
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name)
        }
        assert "__all__" in targets, module.name
