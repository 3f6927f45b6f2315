"""``quality.json``: what each quantization of one model costs in quality, against float32.

Written by ``tokenbooth model eval`` (:mod:`service.models.eval`), copied into a sweep's run
directory, read by the report's speed-quality section. Import-light on purpose (msgspec only):
the report reads it without loading an engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import msgspec

__all__ = [
    "QUALITY_FILE",
    "REFERENCE_QUANTIZATION",
    "EvalSample",
    "QualityReport",
    "VariantQuality",
    "read_quality",
    "write_quality",
]

QUALITY_FILE: Final = "quality.json"
"""File name of the report, in the eval's output dir and in a run directory."""
REFERENCE_QUANTIZATION: Final = "float32"
"""The build every other quantization is compared with."""


class EvalSample(msgspec.Struct, frozen=True, kw_only=True):
    """What the figures were measured on, so two reports can be compared only when equal."""

    perplexity_tokens: int  # tokens of held-out text scored
    perplexity_source: str  # where that text comes from (title, author, licence)
    agreement_prompts: int  # prompts whose greedy continuations are compared
    agreement_tokens: int  # N: the first N generated tokens must match the reference's
    tasks: int  # known-answer questions


class VariantQuality(msgspec.Struct, frozen=True, kw_only=True):
    """One quantization's quality and cost, measured against the reference build."""

    quantization: str
    compute_type: str  # what CTranslate2 ran it with on this device
    perplexity: float
    perplexity_increase: float  # perplexity / reference perplexity - 1 (0.019 = +1.9 %)
    greedy_agreement: float  # share of prompts whose first N tokens equal the reference's
    mean_first_divergence: float  # mean index of the first differing token (N when equal)
    task_accuracy: float  # share of known-answer questions answered correctly
    size_bytes: int  # model directory on disk
    rss_bytes: int  # resident memory added by loading it
    load_s: float  # time to load it


class QualityReport(msgspec.Struct, frozen=True, kw_only=True):
    """Every variant of one model source, measured on one device with one sample."""

    model: str  # the model's name (manifest)
    source: str  # the weights every variant was built from
    device: str
    reference: str = REFERENCE_QUANTIZATION
    sample: EvalSample
    variants: tuple[VariantQuality, ...]

    def variant(self, quantization: str) -> VariantQuality | None:
        """The figures of ``quantization``, if it was measured."""
        return next((v for v in self.variants if v.quantization == quantization), None)


def write_quality(report: QualityReport, directory: Path) -> Path:
    """Write ``report`` as ``directory/quality.json`` (pretty-printed); return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / QUALITY_FILE
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    return path


def read_quality(path: Path) -> QualityReport:
    """Read a ``quality.json`` (a file, or a directory holding one).

    Raises:
        msgspec.ValidationError: the file is not a quality report of this shape.
    """
    file = path / QUALITY_FILE if path.is_dir() else path
    return msgspec.json.decode(file.read_bytes(), type=QualityReport)
