"""The sweep's quality hook: ``tokenbooth model eval`` once per run, into ``RUN_DIR/quality``.

A sweep that compares quantizations should say what each costs in quality, not only in speed.
When the spec asks (``[report] quality = true``), or a local CTranslate2 target sweeps two or
more quantizations (``[report] quality`` absent), the runner calls :func:`run_quality_eval`
after the last point: it runs ``tokenbooth model eval --model SOURCE --quantizations Q1,Q2
--output RUN_DIR/quality`` as a subprocess, its output in ``quality/eval.log``. A failed or
missing eval is a notice in ``sweep.log``, never a failed sweep: the points stand, and the
report's speed-quality section says how to add the file later. Remote targets are skipped with
a notice (their builds are not the harness's to evaluate). A resumed run that already holds a
readable ``quality.json`` does not evaluate again.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from loadgen.results import QUALITY_DIR, QUALITY_LOG_FILE, RunDir
from loadgen.spec import SweepSpec
from service.errors import TokenboothError
from service.models.quality import QUALITY_FILE, read_quality

__all__ = [
    "QUALITY_TIMEOUT_S",
    "QualityDecision",
    "decide",
    "eval_command",
    "run_quality_eval",
    "tokenbooth_program",
]

logger = logging.getLogger("tokenbooth.loadgen")

QUALITY_TIMEOUT_S: Final = 3600.0
"""Longest the eval may run (it builds and scores every variant on this machine)."""


@dataclass(frozen=True)
class QualityDecision:
    """Whether the run evaluates quality, and why (``why`` empty: nothing asked, no notice)."""

    run: bool
    why: str


def _quantizations(spec: SweepSpec) -> list[str]:
    """The sweep's distinct quantizations, in configuration order."""
    return list(dict.fromkeys(c.quantization for c in spec.configs()))


def decide(spec: SweepSpec) -> QualityDecision:
    """Apply ``[report] quality`` (see the module docstring) to a parsed spec."""
    quants = _quantizations(spec)
    several = len(quants) >= 2
    if spec.quality is False:
        return QualityDecision(False, "")
    if spec.target.kind == "remote":
        why = "the target is remote (tokenbooth evaluates only the builds its local replicas serve)"
        return QualityDecision(False, why if several else "")
    if spec.quality:
        return QualityDecision(True, "[report] quality = true")
    if not several:
        return QualityDecision(False, "")
    if spec.target.engine == "fake":
        return QualityDecision(
            False,
            "the fake engine ignores quantization (set [report] quality = true to evaluate the "
            "model's builds anyway)",
        )
    return QualityDecision(True, f"the sweep compares {len(quants)} quantizations")


def tokenbooth_program() -> list[str]:
    """How to call ``tokenbooth``: the console script on PATH, else this interpreter's module."""
    found = shutil.which("tokenbooth")
    return [found] if found else [sys.executable, "-m", "service.cli"]


def _model_source(spec: SweepSpec) -> str:
    """The weights the sweep's replicas were built from (the built-in GGUF when unset)."""
    if spec.target.model:
        return spec.target.model
    from service.models.paths import default_gguf_path

    return str(default_gguf_path())


def eval_command(spec: SweepSpec, output: Path, program: Sequence[str]) -> list[str]:
    """The eval's command line for ``spec``'s model and quantizations, writing to ``output``."""
    return [
        *program,
        "model",
        "eval",
        "--model",
        _model_source(spec),
        "--quantizations",
        ",".join(_quantizations(spec)),
        "--output",
        str(output),
    ]


def _notice(text: str) -> None:
    logger.warning("notice: quality evaluation skipped: %s", text)


def run_quality_eval(
    spec: SweepSpec,
    run: RunDir,
    *,
    program: Sequence[str] | None = None,
    timeout_s: float = QUALITY_TIMEOUT_S,
) -> Path | None:
    """Run the eval once for this run when :func:`decide` says so; return ``quality.json``.

    Args:
        spec: The sweep's spec.
        run: Its run directory.
        program: How to call ``tokenbooth`` (default :func:`tokenbooth_program`); tests inject
            a fake one.
        timeout_s: Longest the eval may run.

    Returns:
        The path of the run's ``quality.json``, or ``None`` when skipped or failed (a notice
        in the log says why).
    """
    decision = decide(spec)
    if not decision.run:
        if decision.why:
            _notice(decision.why)
        return None
    out = run.path / QUALITY_DIR
    path = out / QUALITY_FILE
    if path.exists():
        try:
            read_quality(path)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            logger.warning("%s is unreadable (%s): evaluating again", path, exc)
        else:
            logger.info("quality: %s already recorded (resumed run)", path)
            return path
    try:
        cmd = eval_command(spec, out, program or tokenbooth_program())
    except TokenboothError as exc:
        _notice(f"no model source to evaluate: {exc.detail}")
        return None
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / QUALITY_LOG_FILE
    logger.info("quality: %s (%s); output in %s", shlex.join(cmd), decision.why, log_path)
    try:
        with log_path.open("ab") as log:
            proc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
            )
    except subprocess.TimeoutExpired:
        _notice(f"`tokenbooth model eval` ran past {timeout_s:g} s (see {log_path})")
        return None
    except OSError as exc:
        _notice(f"`{shlex.join(cmd[:3])}` could not start: {exc}")
        return None
    if proc.returncode != 0:
        _notice(
            f"`tokenbooth model eval` exited with status {proc.returncode} (see {log_path}); "
            "the report's speed-quality section says how to add it later"
        )
        return None
    try:
        read_quality(path)
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        _notice(f"`tokenbooth model eval` wrote no readable {path}: {exc}")
        return None
    logger.info("quality: recorded %s", path)
    return path
