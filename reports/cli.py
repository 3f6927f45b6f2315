"""``tokenbooth report``: plugged into the console command through the ``tokenbooth.commands``
entry-point group, so ``service.cli`` never imports this package."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.errors import TokenboothError

__all__ = ["ReportError", "register", "run"]


class ReportError(TokenboothError):
    """The report could not be built (e.g. a directory is not a run directory)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` subcommand.

    Args:
        subparsers: The ``tokenbooth`` command's subparsers.
    """
    parser = subparsers.add_parser(
        "report",
        help="capacity report (HTML, Markdown, CSV) of a sweep run directory",
        description=(
            "Analyse a sweep's run directory: latency/throughput figures, knees, SLO capacity, "
            "a fitted capacity model and a replica recommendation. With two run directories "
            "A B, B is reported in full and compared against A, flagging regressions beyond "
            "noise. Prints the HTML report's path as its last line."
        ),
    )
    parser.add_argument("run_dir", type=Path, help="run directory (the baseline A with two)")
    parser.add_argument(
        "run_dir_b", type=Path, nargs="?", default=None, help="run directory B compared with A"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="output directory (default RUN_DIR/report)"
    )
    parser.add_argument(
        "--target-rps",
        type=float,
        default=None,
        help="load the recommendation must carry (default: the spec's [report] target_rps)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap and simulation seed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the report; print the Markdown and CSV paths, then the HTML path last.

    Args:
        args: Parsed ``report`` arguments.

    Returns:
        0 on success.

    Raises:
        ReportError: A directory is not a run directory, or the target is not positive.
    """
    from reports.pipeline import build_report

    if args.target_rps is not None and not args.target_rps > 0:
        raise ReportError(f"--target-rps must be positive, got {args.target_rps}")
    try:
        files = build_report(
            args.run_dir,
            args.run_dir_b,
            output=args.output,
            target_rps=args.target_rps,
            seed=args.seed,
        )
    except FileNotFoundError as exc:
        raise ReportError(str(exc)) from exc
    print(f"recommendation: {files.recommendation.headline()}")
    if files.comparison is not None:
        print(f"regressions: {len(files.comparison.regressions)}")
    print(f"markdown: {files.markdown}")
    print(f"summary: {files.summary_csv}")
    print(files.html)
    return 0
