"""``tokenbooth bench compare`` flags: import-light (argparse only), loaded for every command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["assign_urls", "register_compare", "run_compare_cli", "server_settings"]

_SERVE_KINDS = ("tokenbooth", "llamacpp")  # bench.compare.ServeSpec.kind


def _int_list(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text}") from exc
    if min(values, default=1) < 1:
        raise argparse.ArgumentTypeError("stream counts must be >= 1")
    return values


def _float_list(text: str) -> list[float]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of rates: {text}") from exc
    if any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError("rates must be > 0")
    return values


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().replace("-", "_"), value.strip()


def assign_urls(
    positional: list[str], serve_a: str | None, serve_b: str | None
) -> tuple[str | None, str | None]:
    """The positional URLs given to the sides the benchmark does not serve itself, in order.

    Raises:
        ValueError: more or fewer URLs than unserved sides.
    """
    wanted = [serve_a is None, serve_b is None]
    if len(positional) != sum(wanted):
        raise ValueError(
            f"expected {sum(wanted)} URL(s) (one per side without --serve-a/--serve-b), "
            f"got {len(positional)}"
        )
    urls = iter(positional)
    a = next(urls) if wanted[0] else None
    b = next(urls) if wanted[1] else None
    return a, b


def server_settings(common: list[tuple[str, str]], own: list[tuple[str, str]]) -> dict[str, str]:
    """One served tokenbooth's settings: ``--server-arg`` then its side's, the latter winning."""
    return dict(common) | dict(own)


def register_compare(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench compare`` to the ``bench`` subcommands."""
    cmp = bench_sub.add_parser(
        "compare",
        help="two OpenAI-compatible servers side by side with the same client: closed loop "
        "and Poisson, tok/s, TTFT, ITL and their ratios",
        description="Phases alternate A, B, A, B per level. Without URLs, --serve-a/--serve-b "
        "start the servers on loopback (tokenbooth: the default model, --server-arg KEY=VALUE "
        "for its settings; llamacpp: the cached scripts/build_llama_server.sh build on the "
        "default GGUF) and stop them at the end.",
    )
    cmp.add_argument("urls", nargs="*", metavar="URL", help="http://host:port of A, then B")
    cmp.add_argument("--label-a", default="tokenbooth")
    cmp.add_argument("--label-b", default="llamacpp")
    cmp.add_argument("--model-a", default=None, help="model name (default: first of /v1/models)")
    cmp.add_argument("--model-b", default=None)
    cmp.add_argument("--serve-a", choices=_SERVE_KINDS, default=None)
    cmp.add_argument("--serve-b", choices=_SERVE_KINDS, default=None)
    for flag, side in (("--server-arg", "any served tokenbooth"), ("--server-arg-a", "A"),
                       ("--server-arg-b", "B")):  # fmt: skip
        cmp.add_argument(
            flag,
            type=_key_value,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"a ServiceSettings field for {side} (e.g. batch_workers=2), repeatable",
        )
    cmp.add_argument(
        "--llama-threads", type=int, default=None, help="a served llamacpp's -t (default: cores)"
    )
    cmp.add_argument("--streams", type=_int_list, default=[1, 8, 32], help="closed-loop levels")
    cmp.add_argument("--rates", type=_float_list, default=[1.0, 2.0], help="Poisson req/s")
    cmp.add_argument("--prompt-words", type=int, default=64)
    cmp.add_argument("--max-tokens", type=int, default=64)
    cmp.add_argument("--repeats", type=int, default=2, help="A/B phase pairs per level")
    cmp.add_argument("--duration-s", type=float, default=20.0, help="measurement window")
    cmp.add_argument("--warmup-s", type=float, default=5.0, help="discarded, before each window")
    cmp.add_argument("--max-requests", type=int, default=5000, help="per phase, all included")
    cmp.add_argument("--max-in-flight", type=int, default=256, help="open loop's bound")
    cmp.add_argument("--request-timeout-s", type=float, default=120.0)
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--json", type=Path, default=None, help="also write every figure here")
    cmp.set_defaults(func=run_compare_cli)


def run_compare_cli(args: argparse.Namespace) -> int:
    """Run ``bench compare`` with the parsed flags."""
    try:
        return _run(args)
    except ValueError as exc:  # bad flags found late (URLs, settings): one line, no traceback
        print(f"bench compare: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from bench.compare import CompareConfig, ServeSpec, levels_from, run_compare

    def spec(kind: Any, own: list[tuple[str, str]]) -> ServeSpec | None:
        if kind is None:
            return None
        if kind == "tokenbooth":
            return ServeSpec(kind, server_settings(args.server_arg, own))
        return ServeSpec(kind, threads=args.llama_threads)

    config = CompareConfig(
        levels=tuple(levels_from(args.streams, args.rates)),
        prompt_words=args.prompt_words,
        max_tokens=args.max_tokens,
        repeats=args.repeats,
        duration_s=args.duration_s,
        warmup_s=args.warmup_s,
        max_requests=args.max_requests,
        max_in_flight=args.max_in_flight,
        request_timeout_s=args.request_timeout_s,
        seed=args.seed,
    )
    return run_compare(
        assign_urls(args.urls, args.serve_a, args.serve_b),
        (args.label_a, args.label_b),
        (args.model_a, args.model_b),
        (spec(args.serve_a, args.server_arg_a), spec(args.serve_b, args.server_arg_b)),
        config,
        json_path=args.json,
    )
