"""``tokenbooth bench``: registered through the entry-point group, not by service.cli."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import service.cli
from bench.cli import run_engine
from service.cli import settings_from_args


def test_bench_engine_plugs_into_the_tokenbooth_command(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(name="bench", value="bench.cli:register", group=service.cli.COMMANDS_GROUP)
    monkeypatch.setattr(
        service.cli, "entry_points", lambda group: [ep] if group == ep.group else []
    )
    args = service.cli.build_parser().parse_args(
        ["bench", "engine", "--concurrency", "4", "--max-batch-size", "2", "--engine", "fake"]
    )
    assert args.func is run_engine
    assert (args.concurrency, args.max_tokens, args.repeats) == (4, 64, 3)
    settings = settings_from_args(args)
    assert (settings.max_batch_size, settings.engine) == (2, "fake")


def test_without_the_entry_point_there_is_no_bench_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(service.cli, "entry_points", lambda group: [])
    with pytest.raises(SystemExit):
        service.cli.build_parser().parse_args(["bench", "engine"])
    assert "invalid choice: 'bench'" in capsys.readouterr().err


def test_the_benchmark_picks_the_services_address_itself(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = service.cli.build_parser()  # the installed entry points
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "engine", "--port", "9000"])
    assert "unrecognized arguments: --port 9000" in capsys.readouterr().err
