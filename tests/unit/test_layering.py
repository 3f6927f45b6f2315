"""The import contracts of pyproject.toml ``[tool.importlinter]`` hold, and each one can break.

Dependencies point one way: ``telemetry <- service <- loadgen <- reports``, with ``bench`` on
service and ``dashboards`` on telemetry. lint-imports (import-linter) checks the contracts on the
import graph of the source tree, function-level imports included.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# Top-level directories with Python files that are no layer: tests, and scripts run by hand.
NOT_LAYERS = {"tests", "scripts"}

# One forbidden import per contract, each written as a new module into a copy of the tree:
# contract id -> (module path, source).
VIOLATIONS: dict[str, tuple[str, str]] = {
    "layers": ("telemetry/_violation.py", "import service.settings\n"),
    "leaves": ("service/_violation.py", "import bench\nimport dashboards\n"),
    "bench": ("bench/_violation.py", "import reports.load\n"),
    "dashboards": ("dashboards/_violation.py", "import service.settings\n"),
    "loadgen-service-api": ("loadgen/_violation_api.py", "import service.app\n"),
    "no-engine": ("loadgen/_violation_engine.py", "import service.fake_engine\n"),
    "no-ctranslate2": ("reports/_violation_ct2.py", "import ctranslate2\n"),
    "reports-offline": ("reports/_violation_http.py", "import httpx\n"),
    "reports-loadgen-api": ("reports/_violation_api.py", "import loadgen.runner\n"),
}


def importlinter_config(root: Path) -> dict[str, Any]:
    with (root / "pyproject.toml").open("rb") as f:
        config: dict[str, Any] = tomllib.load(f)["tool"]["importlinter"]
    return config


def lint_imports(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on the tree at ``root`` with this interpreter, no cache left behind."""
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache", "--no-logo", *args, "pyproject.toml"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        # Wide enough that rich does not wrap a contract's name and status across lines.
        env={**os.environ, "COLUMNS": "250"},
        check=False,
    )


def contract_status(output: str, names: list[str]) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from lint-imports' summary lines."""
    status = {}
    for name in names:
        match = re.search(rf"^{re.escape(name)} (KEPT|BROKEN)\b", output, re.MULTILINE)
        assert match, f"no status line for contract {name!r} in:\n{output}"
        status[name] = match.group(1)
    return status


def test_every_package_has_a_place_in_the_contracts() -> None:
    config = importlinter_config(REPO)
    packages = {
        d.name
        for d in REPO.iterdir()
        if d.is_dir() and not d.name.startswith(".") and any(d.glob("*.py"))
    }
    assert set(config["root_packages"]) == packages - NOT_LAYERS
    with (REPO / "pyproject.toml").open("rb") as f:
        installed = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {pattern.rstrip("*") for pattern in installed} <= set(config["root_packages"])
    for package in config["root_packages"]:
        placed = [
            c["id"]
            for c in config["contracts"]
            if package in c.get("layers", []) or package in c.get("source_modules", [])
        ]
        assert placed, f"{package} is in no contract"


def test_import_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    names = [c["name"] for c in importlinter_config(REPO)["contracts"]]
    assert set(contract_status(result.stdout, names).values()) == {"KEPT"}


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python files of every root package and pyproject.toml, copied to a scratch dir."""
    root = tmp_path_factory.mktemp("tree")
    for package in importlinter_config(REPO)["root_packages"]:
        shutil.copytree(
            REPO / package,
            root / package,
            ignore=lambda d, names: [
                n for n in names if not n.endswith(".py") and not Path(d, n).is_dir()
            ],
        )
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_every_contract_has_a_violation_case() -> None:
    assert {c["id"] for c in importlinter_config(REPO)["contracts"]} == set(VIOLATIONS)


@pytest.mark.parametrize("contract_id", sorted(VIOLATIONS))
def test_contract_breaks_on_a_forbidden_import(tree_copy: Path, contract_id: str) -> None:
    contract = next(
        c for c in importlinter_config(tree_copy)["contracts"] if c["id"] == contract_id
    )
    module, source = VIOLATIONS[contract_id]
    violation = tree_copy / module
    violation.write_text(source, encoding="utf-8")
    try:
        result = lint_imports(tree_copy, "--contract", contract_id)
    finally:
        violation.unlink()
    status = contract_status(result.stdout, [contract["name"]])
    assert status[contract["name"]] == "BROKEN", result.stdout + result.stderr
    assert result.returncode != 0
    # The report names the new module as the importer, so its import is what broke the contract.
    importer = module.removesuffix(".py").replace("/", ".")
    assert importer in result.stdout, result.stdout
