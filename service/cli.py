"""The ``tokenbooth`` command: thin argument parsing that dispatches to the packages."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from service.settings import ServiceSettings

__all__ = ["COMMANDS_GROUP", "build_parser", "main"]

COMMANDS_GROUP = "tokenbooth.commands"
"""Entry-point group of extra subcommands: ``register(subparsers)`` adds a parser whose
``func(args) -> int`` default runs it."""


def _flag_type(annotation: Any) -> tuple[Any, list[str] | None, bool]:
    """(argparse type, choices, is_bool) for a settings field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return str, [str(a) for a in typing.get_args(annotation)], False
    if annotation is bool:
        return None, None, True
    if annotation is SecretStr:
        return str, None, False
    if annotation in (int, float, str, Path):
        return annotation, None, False
    return str, None, False


def _add_settings_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    group = parser.add_argument_group(
        "service settings (each also settable as TOKENBOOTH_<NAME> in the environment)"
    )
    for name, field in ServiceSettings.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        typ, choices, is_bool = _flag_type(field.annotation)
        default = field.default
        help_text = (
            f"{field.description or name} (default: {default}; env TOKENBOOTH_{name.upper()})"
        )
        if is_bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            group.add_argument(
                flag, dest=name, type=typ, choices=choices, default=None, help=help_text
            )


def _settings_from(args: argparse.Namespace) -> ServiceSettings:
    overrides = {
        name: getattr(args, name)
        for name in ServiceSettings.model_fields
        if getattr(args, name, None) is not None
    }
    return ServiceSettings(**overrides)


def build_parser() -> argparse.ArgumentParser:
    """The full ``tokenbooth`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="tokenbooth",
        description="Serve, load-test and report on CTranslate2 text-generation models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="build or inspect models")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    build = model_sub.add_parser(
        "build",
        help="convert a model to CTranslate2 (default: the built-in SmolLM2-135M-Instruct GGUF)",
        description="Prints the model directory as its last line. Without --output the model "
        "cache is used and an existing build is reused.",
    )
    build.add_argument("source", nargs="?", type=Path, help="GGUF file, CTranslate2 dir or HF dir")
    build.add_argument(
        "--quantization",
        default="int8",
        choices=["int8", "int8_float32", "int8_float16", "float16", "float32"],
    )
    build.add_argument("--output", type=Path, default=None, help="write here instead of the cache")
    build.add_argument("--models-dir", type=Path, default=None, help="model cache directory")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")

    serve = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible service",
        description="Serve a model over an OpenAI-compatible HTTP API with dynamic batching.",
    )
    _add_settings_flags(serve)

    bench = sub.add_parser("bench", help="benchmarks that print side-by-side ratios")
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
    _add_settings_flags(eng, skip=("host", "port"))
    # Later stages (sweep, report) plug in through entry points, so this module never imports
    # packages that depend on it.
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:
            # A broken plugin must not take `serve` down with it; say so on every use.
            print(f"tokenbooth: subcommand {ep.name!r} unavailable: {exc}", file=sys.stderr)
            continue
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokenbooth`` console script."""
    args = build_parser().parse_args(argv)
    from service.errors import TokenboothError

    try:
        if args.command == "model":
            from service.modelstore import build_model

            path = build_model(
                args.source,
                quantization=args.quantization,
                output=args.output,
                models_dir=args.models_dir,
                force=args.force,
            )
            print(path)
            return 0
        if args.command == "serve":
            from service.server import serve

            return serve(_settings_from(args))
        if getattr(args, "func", None) is not None:
            code: int = args.func(args)
            return code
        if args.command == "bench" and args.bench_command == "engine":
            from service.bench import run_engine_bench

            return run_engine_bench(
                _settings_from(args),
                concurrency=args.concurrency,
                max_tokens=args.max_tokens,
                prompt_tokens=args.prompt_tokens,
                rounds=args.rounds,
                warmup_rounds=args.warmup_rounds,
                ttft_samples=args.ttft_samples,
                repeats=args.repeats,
            )
    except TokenboothError as exc:
        print(f"tokenbooth: error: {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
