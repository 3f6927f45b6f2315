"""Run ``tokenbooth sweep`` as a user would, in a subprocess, for integration tests, and write
the spec blocks those tests share.

Locust's gevent monkey-patching must not reach the test process, so a sweep always runs in a
child process; ``TOKENBOOTH_*`` variables of the test's own environment are dropped so they
cannot leak into the replicas a sweep starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from loadgen.results import RunDir

__all__ = ["TOKENBOOTH", "fake_target_toml", "run_sweep", "run_toml"]

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


def run_toml(**keys: str | float) -> str:
    """A ``[run]`` table of ``keys`` in the order given (strings quoted), and a blank line.

    With :func:`fake_target_toml` it opens a fake-engine spec; the test's own ``[load]`` and
    ``[workload]`` tables follow inline::

        spec = run_toml(name="x", duration_s=2.0) + fake_target_toml(ttft_ms=20, itl_ms=5) + LOAD
    """
    lines = [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
    return "\n".join(["[run]", *lines, "", ""])


def fake_target_toml(
    *,
    ttft_ms: float,
    itl_ms: float,
    max_batch_size: int | Sequence[int] = 16,
    max_batch_delay_ms: int | Sequence[int] = 0,
    batch_workers: int | Sequence[int] | None = None,
    replicas: int | Sequence[int] = 1,
) -> str:
    """The ``[target]`` (local fake engine) and ``[server]`` tables, and a blank line.

    ``ttft_ms``/``itl_ms`` are the fake engine's time to first token and gap between tokens;
    the server fields are sweep axes (a number is a one-value axis). ``batch_workers`` None:
    the field is left out (the server's default).
    """
    server = [
        f"replicas = {_axis(replicas)}",
        f"max_batch_size = {_axis(max_batch_size)}",
        f"max_batch_delay_ms = {_axis(max_batch_delay_ms)}",
    ]
    if batch_workers is not None:
        server.append(f"batch_workers = {_axis(batch_workers)}")
    server.append(f'env = {{ fake_ttft_ms = "{ttft_ms:g}", fake_itl_ms = "{itl_ms:g}" }}')
    target = ["[target]", 'kind = "local"', 'engine = "fake"', "ready_timeout_s = 30.0"]
    return "\n".join([*target, "", "[server]", *server, "", ""])


def _axis(values: int | Sequence[int]) -> str:
    """A TOML list of ``values`` (one number: a list of one)."""
    items = [values] if isinstance(values, int) else list(values)
    return "[" + ", ".join(str(v) for v in items) + "]"


def _toml_value(value: str | float) -> str:
    """A TOML scalar: a string quoted (no escapes needed in these specs), a number as is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        assert '"' not in value and "\\" not in value, value
        return f'"{value}"'
    return repr(value)
