"""Synthetic run directories and their analyses, built once per session (they are read-only)."""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from reports.analysis import Analysis, analyze
from reports.capacity import CapacityModel, fit_run_dir
from reports.cli import register
from reports.load import load_run
from reports.pipeline import FIGURES_DIR, HTML_FILE, MARKDOWN_FILE, SUMMARY_FILE
from tests.unit.reports import synth


@pytest.fixture(scope="session")
def capacity_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Open-loop run with a placed knee, SLO crossings and a lagging invalid point."""
    return synth.write_capacity_run(tmp_path_factory.mktemp("runs") / "capacity")


@pytest.fixture(scope="session")
def capacity_analysis(capacity_run: Path) -> Analysis:
    """The capacity run, analysed."""
    return analyze(load_run(capacity_run))


@pytest.fixture(scope="session")
def scaling_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Closed-loop run of one and two replicas that follows a known batch service time."""
    return synth.write_scaling_run(tmp_path_factory.mktemp("runs") / "scaling")


@pytest.fixture(scope="session")
def one_replica_model(scaling_run: Path) -> CapacityModel:
    """Capacity model fitted on the scaling run's single-replica points only."""
    return fit_run_dir(scaling_run, fit_replicas=[1])


@dataclass(frozen=True)
class CliReport:
    """What ``tokenbooth report`` wrote and printed."""

    output: Path
    stdout: list[str]

    @property
    def html(self) -> Path:
        return self.output / HTML_FILE

    @property
    def markdown(self) -> Path:
        return self.output / MARKDOWN_FILE

    @property
    def summary_csv(self) -> Path:
        return self.output / SUMMARY_FILE

    @property
    def figures(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted((self.output / FIGURES_DIR).glob("*.png"))}


REPORT_TARGET_RPS = 10.0  # the spec says 9: the report must use the flag


@pytest.fixture(scope="session")
def faster_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The capacity run with 25% more throughput everywhere: the capacity run is 20% slower."""
    return synth.write_capacity_run(
        tmp_path_factory.mktemp("runs") / "faster", name="faster", rps_factor=1.25
    )


@pytest.fixture(scope="session")
def capacity_report(
    capacity_run: Path, faster_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> CliReport:
    """``tokenbooth report FASTER CAPACITY --target-rps 10``: the capacity run, reported in
    full and compared against the faster baseline (built once: it is the slow part)."""
    parser = argparse.ArgumentParser(prog="tokenbooth")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path_factory.mktemp("report")
    args = parser.parse_args(
        [
            "report",
            str(faster_run),
            str(capacity_run),
            "--output",
            str(out),
            "--target-rps",
            str(REPORT_TARGET_RPS),
        ]
    )
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert args.func(args) == 0
    return CliReport(out, buf.getvalue().splitlines())
