"""Distributed-mode options: `sweep --master` flags, `loadgen-worker`, external-worker checks."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadgen.cli import master_options
from loadgen.distributed import (
    DEFAULT_MASTER_PORT,
    MasterOptions,
    check_external_workers,
    is_loopback,
)
from loadgen.spec import parse_spec
from service.cli import build_parser, main
from service.errors import TokenboothError

LOCAL = '[run]\nname = "x"\n\n[target]\nkind = "local"\nengine = "fake"\n'
REMOTE = '[run]\nname = "x"\n\n[target]\nkind = "remote"\nurls = ["{url}"]\n'


def _sweep(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["sweep", "spec.toml", *flags])


def test_without_master_the_master_stays_on_loopback_with_local_workers() -> None:
    options, workers = master_options(_sweep("--workers", "3"))
    assert options == MasterOptions(bind="127.0.0.1", port=0, external=False)
    assert workers == 3
    assert master_options(_sweep())[1] is None  # the spec's [load] workers


def test_local_workers_may_listen_where_told_and_dial_it() -> None:
    options, _ = master_options(_sweep("--workers", "2", "--master-bind", "0.0.0.0"))
    assert options.bind == "0.0.0.0"
    assert options.dial_host == "127.0.0.1"  # a wildcard is reached on loopback
    options, _ = master_options(_sweep("--master-bind", "127.0.0.2", "--master-port", "6000"))
    assert (options.dial_host, options.port) == ("127.0.0.2", 6000)


def test_master_listens_everywhere_on_locusts_port_and_waits_for_n() -> None:
    options, workers = master_options(_sweep("--master", "--expect-workers", "4"))
    assert options == MasterOptions(
        bind="0.0.0.0", port=DEFAULT_MASTER_PORT, external=True, timeout_s=60.0
    )
    assert workers == 4
    assert DEFAULT_MASTER_PORT == 5557
    options, _ = master_options(
        _sweep(
            "--master",
            "--expect-workers",
            "1",
            "--master-bind",
            "10.0.0.5",
            "--master-port",
            "7000",
            "--workers-timeout",
            "5",
        )
    )
    assert (options.bind, options.port, options.timeout_s) == ("10.0.0.5", 7000, 5.0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--master",), "--expect-workers N"),
        (("--master", "--expect-workers", "0"), "N >= 1"),
        (("--master", "--expect-workers", "2", "--workers", "2"), "instead of --workers"),
        (("--expect-workers", "2"), "applies to --master"),
        (("--master", "--expect-workers", "1", "--master-port", "70000"), "1..65535"),
        (("--master", "--expect-workers", "1", "--workers-timeout", "0"), "must be > 0"),
    ],
)
def test_combinations_that_cannot_run_are_refused(flags: tuple[str, ...], message: str) -> None:
    with pytest.raises(TokenboothError, match=message):
        master_options(_sweep(*flags))


def test_worker_subcommand_is_registered_with_locusts_default_port() -> None:
    args = build_parser().parse_args(["loadgen-worker", "--master-host", "master.svc"])
    assert (args.master_host, args.master_port) == ("master.svc", DEFAULT_MASTER_PORT)
    assert args.func.__name__ == "run_worker"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["loadgen-worker"])  # --master-host is required


def test_external_workers_need_a_remote_target() -> None:
    external = MasterOptions(bind="0.0.0.0", port=5557, external=True)
    with pytest.raises(TokenboothError, match='kind = "remote"'):
        check_external_workers(parse_spec(LOCAL), external, 2)
    with pytest.raises(TokenboothError, match="--expect-workers"):
        check_external_workers(parse_spec(REMOTE.format(url="http://svc:8000")), external, 0)
    check_external_workers(parse_spec(REMOTE.format(url="http://svc:8000")), external, 2)
    check_external_workers(parse_spec(LOCAL), MasterOptions(), 2)  # local workers: fine


def test_loopback_targets_warn_when_workers_are_elsewhere(caplog: pytest.LogCaptureFixture) -> None:
    spec = parse_spec(REMOTE.format(url="http://localhost:8000"))
    check_external_workers(spec, MasterOptions(bind="0.0.0.0", external=True), 2)
    assert "loopback" in caplog.text
    caplog.clear()
    check_external_workers(spec, MasterOptions(bind="127.0.0.1", external=True), 2)
    assert caplog.text == ""  # the workers are on this host too


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("[::1]", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("tokenbooth.default.svc", False),
        ("0.0.0.0", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_master_of_local_replicas_fails_before_the_run_dir_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "local.toml"
    spec.write_text(LOCAL)
    out = tmp_path / "run"
    code = main(["sweep", str(spec), "--output", str(out), "--master", "--expect-workers", "2"])
    assert code == 2
    assert "cannot reach the replicas" in capsys.readouterr().err
    assert not out.exists()
