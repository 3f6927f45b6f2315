"""``tokenbooth bench ...``: registered through the ``tokenbooth.commands`` entry-point group.

This module stays import-light (no engine, no HTTP client): the ``tokenbooth`` parser loads it
for every command, ``serve`` included.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.compare_cli import register_compare
from service.cli import add_settings_flags, choice_list, settings_from_args

__all__ = ["register", "run_abuse", "run_engine", "run_int8", "run_loadgen"]

_ABUSE_SCENARIOS = ("slowloris", "stalled", "large-prompt", "drain")  # bench.abuse.SCENARIOS


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
    _register_abuse(bench_sub)
    _register_loadgen(bench_sub)
    register_compare(bench_sub)
    _register_int8(bench_sub)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text}") from exc


_INT8_BACKENDS = ("onednn", "mkl")  # bench.int8_codes.BACKENDS (kept import-light)


_backend_list = choice_list(_INT8_BACKENDS, "backend")


def _register_int8(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    int8 = bench_sub.add_parser(
        "int8",
        help="int8 weight-code bounds (CTranslate2's and tokenbooth's) on each CPU GEMM "
        "backend: perplexity and tasks against float32",
    )
    int8.add_argument(
        "--model", type=Path, default=None, metavar="SOURCE", help="GGUF file or HF dir"
    )
    int8.add_argument(
        "--codes",
        type=_int_list,
        default=None,
        help="comma-separated bounds (default: CTranslate2's 127 and tokenbooth's own)",
    )
    int8.add_argument(
        "--backends",
        type=_backend_list,
        default=list(_INT8_BACKENDS),
        help="comma-separated of onednn, mkl (MKL is slow on AMD CPUs)",
    )
    int8.add_argument("--models-dir", type=Path, default=None, help="model cache directory")
    int8.set_defaults(func=run_int8)


def run_int8(args: argparse.Namespace) -> int:
    """Run ``bench int8`` with the parsed flags."""
    from bench.int8_codes import run_int8_bench

    bounds = {} if args.codes is None else {"code_bounds": args.codes}
    return run_int8_bench(args.model, backends=args.backends, models_dir=args.models_dir, **bounds)


def _rate_list(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of rates: {text}") from exc
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("rates must be positive")
    return sorted(rates)


def _register_loadgen(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lg = bench_sub.add_parser(
        "loadgen",
        help="the harness's own ceiling (req/s, streamed tokens/s, TTFT error) against canned "
        "nginx, with --workers and GuideLLM side by side",
        description="Needs Debian's nginx. GuideLLM is installed into its own venv under "
        "~/.cache/tokenbooth/peers/ on first use (--no-guidellm skips it).",
    )
    lg.add_argument("--chunks", type=int, default=64, help="streamed chunks per response")
    lg.add_argument(
        "--rates",
        type=_rate_list,
        default=[1000.0, 2000.0, 3000.0, 3500.0, 4000.0, 5000.0],
        help="comma-separated constant arrival rates of the one-process ladder (req/s)",
    )
    lg.add_argument("--duration", type=float, default=4.0, help="seconds per point")
    lg.add_argument("--workers", type=int, default=2, help="the multi-process ladder's workers")
    lg.add_argument("--no-guidellm", action="store_true", help="leave GuideLLM out")
    lg.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="model dir with tokenizer.json for GuideLLM (default: the built default model)",
    )
    lg.set_defaults(func=run_loadgen)


_scenario_list = choice_list(_ABUSE_SCENARIOS, "scenario")


def _register_abuse(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    abuse = bench_sub.add_parser(
        "abuse",
        help="hostile-client scenarios (slowloris, stalled readers, large prompts, drain) "
        "against a real replica, with PASS/FAIL per scenario",
        description="Each scenario runs on its own replica on loopback (the fake engine unless "
        "--engine says otherwise). Exits 1 on any FAIL unless --no-fail.",
    )
    abuse.add_argument(
        "--scenarios",
        type=_scenario_list,
        default=list(_ABUSE_SCENARIOS),
        help=f"comma-separated subset of {','.join(_ABUSE_SCENARIOS)} (default: all)",
    )
    abuse.add_argument("--slowloris-connections", type=int, default=300)
    abuse.add_argument("--stalled-streams", type=int, default=8)
    abuse.add_argument(
        "--stalled-max-tokens",
        type=int,
        default=None,
        help="tokens per stalled stream (default: 32768 on the fake engine, enough to overflow "
        "loopback kernel buffers; 1024 otherwise)",
    )
    abuse.add_argument("--stalled-read-bytes", type=int, default=5000)
    abuse.add_argument("--large-prompt-requests", type=int, default=8)
    abuse.add_argument("--large-prompt-bytes", type=int, default=1 << 20)
    abuse.add_argument("--large-prompt-stream-tokens", type=int, default=300)
    abuse.add_argument("--drain-streams", type=int, default=8)
    abuse.add_argument("--drain-max-tokens", type=int, default=400)
    abuse.add_argument("--json", type=Path, default=None, help="also write the figures here")
    abuse.add_argument("--no-fail", action="store_true", help="exit 0 even when a target fails")
    add_settings_flags(abuse, skip=("host", "port"))
    abuse.set_defaults(func=run_abuse)


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


def run_abuse(args: argparse.Namespace) -> int:
    """Run ``bench abuse`` with the parsed flags."""
    from bench.abuse import AbuseSizes, run_abuse_bench

    sizes = AbuseSizes(
        slowloris_connections=args.slowloris_connections,
        stalled_streams=args.stalled_streams,
        stalled_max_tokens=args.stalled_max_tokens,
        stalled_read_bytes=args.stalled_read_bytes,
        large_prompt_requests=args.large_prompt_requests,
        large_prompt_bytes=args.large_prompt_bytes,
        large_prompt_stream_tokens=args.large_prompt_stream_tokens,
        drain_streams=args.drain_streams,
        drain_max_tokens=args.drain_max_tokens,
    )
    return run_abuse_bench(
        settings_from_args(args),
        scenarios=args.scenarios,
        sizes=sizes,
        json_path=args.json,
        no_fail=args.no_fail,
    )


def run_loadgen(args: argparse.Namespace) -> int:
    """Run ``bench loadgen`` with the parsed flags."""
    from bench.loadgen_ceiling import run_loadgen_bench

    tokenizer = args.tokenizer
    if tokenizer is None and not args.no_guidellm:
        from service.models import resolve_model

        tokenizer = resolve_model(None, "int8", build=False)
    return run_loadgen_bench(
        chunks=args.chunks,
        rates=args.rates,
        duration_s=args.duration,
        workers=args.workers,
        guidellm=not args.no_guidellm,
        tokenizer=tokenizer,
    )
