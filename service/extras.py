"""Optional extras of the tokenbooth distribution: which are installed, and what to say if not.

The serving image installs only ``[project].dependencies``; the load harness and the report stack
are the extras ``loadgen`` and ``reports``. Each subcommand plugin names the extra it needs in its
entry point (``sweep = "loadgen.cli:register [loadgen]"``), and the requirements of an extra are
read from the installed distribution's metadata, so pyproject.toml stays the one list of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import metadata
from typing import Final

__all__ = ["DISTRIBUTION", "extra_requirements", "missing_extra"]

DISTRIBUTION: Final = "tokenbooth"

# Requires-Dist lines look like `locust>=2.30; extra == "loadgen"` (PEP 508, as setuptools writes).
_EXTRA_MARKER: Final = re.compile(r"""\bextra\s*==\s*["']([^"']+)["']""")
_NAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_requirements(extra: str) -> list[str]:
    """Distribution names the installed tokenbooth metadata requires for ``extra``.

    Raises:
        importlib.metadata.PackageNotFoundError: tokenbooth itself is not installed.
    """
    names: list[str] = []
    for line in metadata.requires(DISTRIBUTION) or []:
        requirement, _, marker = line.partition(";")
        found = _EXTRA_MARKER.search(marker)
        name = _NAME.match(requirement.strip())
        if found is None or found.group(1) != extra or name is None:
            continue
        if _normalise(name.group(0)) != DISTRIBUTION:  # tokenbooth[a,b] inside another extra
            names.append(name.group(0))
    return names


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def missing_extra(command: str, extras: Sequence[str]) -> str | None:
    """One line naming the extra ``tokenbooth <command>`` lacks and how to install it, or None.

    Checked before the command runs, so a serving-only install fails with this line instead of
    an ImportError from deep inside Locust or pandas.
    """
    missing = [
        name for extra in extras for name in extra_requirements(extra) if not _installed(name)
    ]
    if not missing:
        return None
    spec = ",".join(extras)
    return (
        f"tokenbooth {command} needs the '{spec}' extra, which is not installed "
        f"(missing: {', '.join(sorted(set(missing)))}); install it with: "
        f"pip install 'tokenbooth[{spec}]'"
    )
