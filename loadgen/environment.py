"""``environment.json``: what a run was measured on (machine, GPU, packages, git revision).

Written at the start of a sweep and completed as the run learns more (the served model's
manifest, the server's kind, the tokenizer); keys are :class:`loadgen.results.Env`.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from loadgen.results import Env, Gpu, Machine
from loadgen.spec import SweepSpec

__all__ = ["environment_metadata"]

_PACKAGES = (
    "tokenbooth",
    "ctranslate2",
    "locust",
    "litestar",
    "uvicorn",
    "prometheus-client",
    "opentelemetry-sdk",
    "numpy",
    "pandas",
    "tokenizers",
)


def _git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu_info() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        return {Gpu.AVAILABLE: False, Gpu.DETAIL: f"NVML unavailable: {exc}", Gpu.DEVICES: []}
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            devices.append(
                {
                    Gpu.INDEX: i,
                    Gpu.NAME: name.decode() if isinstance(name, bytes) else str(name),
                    Gpu.MEMORY_TOTAL_BYTES: int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                }
            )
        detail = f"{len(devices)} GPU(s)"
        return {Gpu.AVAILABLE: bool(devices), Gpu.DETAIL: detail, Gpu.DEVICES: devices}
    finally:
        pynvml.nvmlShutdown()


def environment_metadata(spec: SweepSpec, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """Machine, GPU, versions, git revision and model manifest for ``environment.json``."""
    packages = {}
    for name in _PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        Env.TOKENBOOTH_VERSION: packages.get("tokenbooth", "unknown"),
        Env.STARTED_AT: datetime.now(UTC).isoformat(),
        Env.MACHINE: {
            Machine.HOSTNAME: platform.node(),
            Machine.PLATFORM: platform.platform(),
            Machine.PYTHON: platform.python_version(),
            Machine.CPU_MODEL: _cpu_model(),
            Machine.CPU_COUNT: os.cpu_count(),
            Machine.MEMORY_BYTES: psutil.virtual_memory().total,
        },
        Env.GPU: _gpu_info(),
        Env.PACKAGES: packages,
        Env.GIT_REVISION: _git_revision(),
        Env.MODEL_MANIFEST: manifest,
        Env.SPEC_PATH: spec.path,
        Env.SERVER: None,  # what serves the target, once known (SweepRunner._record_server)
        Env.TOKENIZER: None,  # what counts prompt tokens, once chosen (_record_tokenizer)
    }
