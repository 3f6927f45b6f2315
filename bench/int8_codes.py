"""``tokenbooth bench int8``: int8 weight-code bounds side by side on each CPU GEMM backend.

Builds the default model (or ``--model``) in float32 and in int8 with each code bound
(CTranslate2's 127 and tokenbooth's :data:`~service.models.int8.WEIGHT_CODE_MAX`), then, per
backend, loads every build in one fresh interpreter (CTranslate2 picks MKL or oneDNN when it
starts, from ``CT2_USE_MKL``) and measures perplexity and known-answer tasks on the shipped
eval sample against that backend's float32. Quality only: both bounds run the same kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from service.errors import ModelBuildError
from service.models.int8 import CTRANSLATE2_CODE_MAX, WEIGHT_CODE_MAX

__all__ = ["BACKENDS", "CodeRow", "format_rows", "measure_backend", "run_int8_bench"]

BACKENDS: Final = {"onednn": "0", "mkl": "1"}
"""CPU GEMM backends by name, with the ``CT2_USE_MKL`` value that selects each."""
_REFERENCE: Final = "float32"


@dataclass(frozen=True)
class CodeRow:
    """One build on one backend; ``code_max`` 0 is the float32 reference."""

    backend: str
    code_max: int
    perplexity: float
    perplexity_increase: float
    tasks_right: int
    tasks: int


def default_backend() -> str:
    """The backend CTranslate2 picks here by itself: MKL on Intel CPUs, oneDNN elsewhere."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return "onednn"
    return "mkl" if "GenuineIntel" in cpuinfo else "onednn"


def _measure_here(builds: Sequence[str]) -> list[dict[str, float | int | str]]:
    """Measure each ``QUANTIZATION=DIR`` build in this process (on the backend it picked)."""
    from service.models.eval import load_eval_data, measure

    data = load_eval_data()
    rows: list[dict[str, float | int | str]] = []
    for build in builds:
        quantization, directory = build.split("=", 1)
        measured = measure(Path(directory), quantization, data, device="cpu", agreement_tokens=1)
        rows.append(
            {
                "dir": directory,
                "perplexity": measured.perplexity,
                "tasks_right": round(measured.task_accuracy * len(data.tasks)),
                "tasks": len(data.tasks),
            }
        )
    return rows


def measure_backend(
    backend: str, reference: Path, builds: dict[int, Path], *, timeout_s: float = 1800.0
) -> list[CodeRow]:
    """Measure float32 and each bound's build on ``backend`` in one fresh interpreter.

    Raises:
        ModelBuildError: Unknown backend, or the measuring process failed.
    """
    if backend not in BACKENDS:
        raise ModelBuildError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    directories = [f"{_REFERENCE}={reference}", *(f"int8={path}" for path in builds.values())]
    env = os.environ | {"CT2_USE_MKL": BACKENDS[backend]}
    command = [sys.executable, "-m", "bench.int8_codes", *directories]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelBuildError(f"measuring on {backend} took over {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        raise ModelBuildError(f"measuring on {backend} failed: {done.stderr.strip()[-2000:]}")
    try:
        measured = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise ModelBuildError(f"measuring on {backend} printed no result: {exc}") from exc
    base = float(measured[0]["perplexity"])
    codes = [0, *builds]
    return [
        CodeRow(
            backend=backend,
            code_max=code_max,
            perplexity=float(row["perplexity"]),
            perplexity_increase=float(row["perplexity"]) / base - 1,
            tasks_right=int(row["tasks_right"]),
            tasks=int(row["tasks"]),
        )
        for code_max, row in zip(codes, measured, strict=True)
    ]


def format_rows(rows: Sequence[CodeRow], default: str) -> str:
    """The side-by-side table ``bench int8`` prints."""
    lines = [
        f"{'backend':<16} {'int8 codes':>10} {'ppl':>8} {'vs float32':>10} {'tasks':>7}",
    ]
    for row in rows:
        name = row.backend + (" (default)" if row.backend == default else "")
        codes = f"+-{row.code_max}" if row.code_max else "float32"
        lines.append(
            f"{name:<16} {codes:>10} {row.perplexity:>8.3f} {row.perplexity_increase:>+10.1%} "
            f"{row.tasks_right:>3}/{row.tasks:<3}"
        )
    return "\n".join(lines)


def run_int8_bench(
    source: Path | None = None,
    *,
    code_bounds: Sequence[int] = (CTRANSLATE2_CODE_MAX, WEIGHT_CODE_MAX),
    backends: Sequence[str] = tuple(BACKENDS),
    models_dir: Path | None = None,
) -> int:
    """Build, measure on each backend, print the table; 0 on success, 1 on any failure."""
    from service.models import build_model

    try:
        reference = build_model(source, quantization=_REFERENCE, models_dir=models_dir)
        with tempfile.TemporaryDirectory(prefix="tokenbooth-int8-") as scratch:
            builds = {
                bound: build_model(
                    source,
                    quantization="int8",
                    output=Path(scratch) / f"codes{bound}",
                    int8_code_max=bound,
                )
                for bound in code_bounds
            }
            rows: list[CodeRow] = []
            for backend in backends:
                print(f"measuring on {backend} ...", file=sys.stderr, flush=True)
                rows.extend(measure_backend(backend, reference, builds))
    except ModelBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_rows(rows, default_backend()))
    return 0


if __name__ == "__main__":
    print(json.dumps(_measure_here(sys.argv[1:])))
