"""``tokenbooth bench ...``: registered through the ``tokenbooth.commands`` entry-point group.

This module stays import-light (no engine, no HTTP client): the ``tokenbooth`` parser loads it
for every command, ``serve`` included.
"""

from __future__ import annotations

import argparse

from service.cli import add_settings_flags, settings_from_args

__all__ = ["register", "run_engine"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` subcommand and its benchmarks."""
    bench = subparsers.add_parser("bench", help="benchmarks that print side-by-side ratios")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    eng = bench_sub.add_parser(
        "engine",
        help="raw generate_batch throughput vs the HTTP service at saturation, and idle TTFT",
    )
    eng.add_argument("--concurrency", type=int, default=32)
    eng.add_argument("--max-tokens", type=int, default=64)
    eng.add_argument("--prompt-tokens", type=int, default=32)
    eng.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="batches per worker in the raw phase; the service is measured over as long",
    )
    eng.add_argument(
        "--warmup-rounds",
        type=int,
        default=2,
        help="batch durations of closed-loop load before the service's measurement window",
    )
    eng.add_argument("--ttft-samples", type=int, default=100)
    eng.add_argument("--repeats", type=int, default=3, help="alternating raw/service pairs")
    # The benchmark picks the service's loopback address and port itself.
    add_settings_flags(eng, skip=("host", "port"))
    eng.set_defaults(func=run_engine)


def run_engine(args: argparse.Namespace) -> int:
    """Run ``bench engine`` with the parsed flags."""
    from bench.engine import run_engine_bench

    return run_engine_bench(
        settings_from_args(args),
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        prompt_tokens=args.prompt_tokens,
        rounds=args.rounds,
        warmup_rounds=args.warmup_rounds,
        ttft_samples=args.ttft_samples,
        repeats=args.repeats,
    )
