"""``tokenbooth report`` wiring: a parser built the way service.cli builds it."""

from __future__ import annotations

import argparse
import re
import shutil
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from loadgen.results import SPEC_FILE
from reports.cli import ReportError, register
from reports.pipeline import HTML_FILE, MARKDOWN_FILE, SUMMARY_FILE
from tests.unit.reports.conftest import REPORT_TARGET_RPS, CliReport


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


def test_defaults_report_one_run_into_it_for_the_spec_target(
    capacity_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A copy: the default output directory is inside the run, and the fixture is shared.
    run = shutil.copytree(capacity_run, tmp_path / "capacity")
    with (run / SPEC_FILE).open("rb") as f:
        target = tomllib.load(f)["report"]["target_rps"]
    assert target != REPORT_TARGET_RPS  # so the flag's value cannot pass for the spec's

    assert _run(["report", str(run)]) == 0

    stdout = capsys.readouterr().out.splitlines()
    out = run / "report"
    assert Path(stdout[-1]) == out / HTML_FILE
    printed = dict(line.split(": ", 1) for line in stdout[:-1])
    assert Path(printed["markdown"]) == out / MARKDOWN_FILE
    assert Path(printed["summary"]) == out / SUMMARY_FILE
    assert all(p.is_file() for p in (out / HTML_FILE, out / MARKDOWN_FILE, out / SUMMARY_FILE))
    # The recommendation is for the spec's [report] target_rps, and says where it came from.
    assert f" for {target:g} req/s: " in printed["recommendation"]
    markdown = (out / MARKDOWN_FILE).read_text()
    assert f"Target load: {target:g} req/s (from spec" in markdown
    # One run: no comparison, so no regressions line and no comparison section.
    assert "regressions" not in printed
    assert "Comparison:" not in markdown
    assert "Comparison:" not in (out / HTML_FILE).read_text()


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
