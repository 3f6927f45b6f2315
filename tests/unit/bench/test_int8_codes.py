"""bench.int8_codes: int8 weight-code bounds measured side by side on a CPU GEMM backend."""

from __future__ import annotations

from pathlib import Path

import pytest

import service.cli
from bench.cli import run_int8
from bench.int8_codes import BACKENDS, CodeRow, format_rows, measure_backend
from service.errors import ModelBuildError
from service.models import build_model, default_gguf_path, read_manifest
from service.models.gguf import parse_gguf
from tests.unit.service.models.helpers import write_tiny_gguf


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-llama.gguf"
    write_tiny_gguf(path, parse_gguf(default_gguf_path()).metadata)
    return path


def test_measure_backend_reads_each_bounds_build_against_float32(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    """The tiny random model on oneDNN, in a real subprocess: every row comes back, in order."""
    reference = build_model(tiny_gguf, quantization="float32", models_dir=tmp_path)
    builds = {
        bound: build_model(
            tiny_gguf, quantization="int8", output=tmp_path / f"c{bound}", int8_code_max=bound
        )
        for bound in (127, 64)
    }
    assert [read_manifest(p).int8_code_max for p in builds.values()] == [127, 64]
    rows = measure_backend("onednn", reference, builds)
    assert [(r.backend, r.code_max) for r in rows] == [
        ("onednn", 0),
        ("onednn", 127),
        ("onednn", 64),
    ]
    assert rows[0].perplexity_increase == 0.0
    assert all(r.perplexity > 1 and r.tasks == 42 for r in rows)
    # Different codes, different weights: the two int8 builds do not score alike.
    assert rows[1].perplexity != rows[2].perplexity


def test_unknown_backend_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError, match="unknown backend 'blas'"):
        measure_backend("blas", tmp_path, {})


def test_table_marks_the_default_backend() -> None:
    rows = [
        CodeRow("onednn", 0, 15.714, 0.0, 27, 42),
        CodeRow("onednn", 127, 18.175, 0.1566, 26, 42),
        CodeRow("mkl", 64, 16.571, 0.055, 28, 42),
    ]
    lines = format_rows(rows, default="onednn").splitlines()
    assert lines[1].split()[:3] == ["onednn", "(default)", "float32"]
    assert "+15.7%" in lines[2] and "26/42" in lines[2]
    assert lines[3].startswith("mkl ") and "+-64" in lines[3]


def test_bench_int8_flags_are_parsed_and_checked_before_any_build(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = service.cli.build_parser()  # the installed entry points
    args = parser.parse_args(["bench", "int8", "--codes", "127,32", "--backends", "mkl"])
    assert args.func is run_int8 and args.model is None
    assert (args.codes, args.backends) == ([127, 32], ["mkl"])
    defaults = parser.parse_args(["bench", "int8"])
    assert defaults.codes is None and tuple(defaults.backends) == tuple(BACKENDS)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "int8", "--backends", "onednn,blas"])
    assert "unknown backend(s) blas; choose from: onednn, mkl" in capsys.readouterr().err
