"""Run ``tokenbooth sweep`` as a user would, in a subprocess, for integration tests.

Locust's gevent monkey-patching must not reach the test process, so a sweep always runs in a
child process; ``TOKENBOOTH_*`` variables of the test's own environment are dropped so they
cannot leak into the replicas a sweep starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from loadgen.results import RunDir

__all__ = ["TOKENBOOTH", "run_sweep"]

TOKENBOOTH = Path(sys.executable).with_name("tokenbooth")
"""The ``tokenbooth`` command of the running interpreter's environment."""


def run_sweep(workdir: Path, name: str, spec_text: str, *, timeout_s: float = 300) -> RunDir:
    """Write ``spec_text`` as ``workdir/NAME.toml``, sweep it into ``workdir/run-NAME``.

    Raises:
        AssertionError: The sweep exited non-zero (its output tails are in the message).
    """
    spec = workdir / f"{name}.toml"
    spec.write_text(spec_text)
    out = workdir / f"run-{name}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENBOOTH_")}
    proc = subprocess.run(
        [str(TOKENBOOTH), "sweep", str(spec), "--output", str(out), "--quiet"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return RunDir(out)
