"""``tokenbooth report`` wiring: a parser built the way service.cli builds it."""

from __future__ import annotations

import argparse
import re
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from reports.cli import ReportError, register
from tests.unit.reports.conftest import CliReport


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenbooth")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    code: int = args.func(args)
    return code


def test_prints_the_html_path_last(capacity_report: CliReport) -> None:
    assert Path(capacity_report.stdout[-1]) == capacity_report.html
    assert capacity_report.html.exists()
    printed = dict(line.split(": ", 1) for line in capacity_report.stdout[:-1])
    assert Path(printed["markdown"]) == capacity_report.markdown
    assert Path(printed["summary"]) == capacity_report.summary_csv
    assert int(printed["regressions"]) > 0
    assert printed["recommendation"].startswith("Run 2 replicas of int8 b8 d5ms w1 t1")


def test_two_runs_side_by_side_with_the_regression_flagged(capacity_report: CliReport) -> None:
    html = capacity_report.html.read_text()
    assert "Comparison: capacity against faster" in html
    assert '<table id="regressions-table">' in html
    regressions = html.split('<table id="regressions-table">')[1].split("</table>")[0]
    # Every int8 level carries 1/1.25 of the baseline's throughput: -20%; float16 is unchanged.
    rows = re.findall(r"<td>throughput \(req/s\)</td>.*?<td>([+-][\d.]+%)</td>", regressions, re.S)
    assert rows == ["-20.0%"] * 12
    assert "float16" not in regressions
    assert regressions.count("REGRESSION") >= 12


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not a run directory"):
        _run(["report", str(tmp_path)])


def test_target_must_be_positive(capacity_run: Path) -> None:
    with pytest.raises(ReportError, match="positive"):
        _run(["report", str(capacity_run), "--target-rps", "0"])


def test_defaults(capacity_run: Path) -> None:
    args = _parser().parse_args(["report", str(capacity_run)])
    assert args.output is None and args.run_dir_b is None and args.target_rps is None
    assert args.func.__name__ == "run"


def test_plugs_into_the_tokenbooth_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import service.cli

    ep = EntryPoint(name="report", value="reports.cli:register", group=service.cli.COMMANDS_GROUP)
    monkeypatch.setattr(
        service.cli, "entry_points", lambda group: [ep] if group == ep.group else []
    )
    assert service.cli.main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
