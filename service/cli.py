"""The ``tokenbooth`` command: thin argument parsing that dispatches to the packages."""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from service.extras import missing_extra
from service.settings import QUANTIZATIONS, ServiceSettings
from telemetry.logging import configure_logging, log_event

__all__ = [
    "COMMANDS_GROUP",
    "add_settings_flags",
    "build_parser",
    "choice_list",
    "main",
    "settings_from_args",
    "warn_api_key_flag",
]

logger = logging.getLogger("tokenbooth.service")

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


def add_settings_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One flag per ServiceSettings field (but ``skip``), each defaulting to None: unset."""
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


def settings_from_args(args: argparse.Namespace) -> ServiceSettings:
    """Settings from the flags :func:`add_settings_flags` added, the environment for the rest."""
    overrides = {
        name: getattr(args, name)
        for name in ServiceSettings.model_fields
        if getattr(args, name, None) is not None
    }
    return ServiceSettings(**overrides)


def warn_api_key_flag(args: argparse.Namespace) -> None:
    """Log a WARNING when ``--api-key`` was given: any local user can read it in ``ps``.

    Call it once logging is configured, so the warning is formatted like every other line.
    """
    if getattr(args, "api_key", None) is None:
        return
    from service.launch import env_name  # only here: it pulls in httpx

    log_event(
        logger,
        "api_key_on_command_line",
        level=logging.WARNING,
        detail="--api-key is visible to every local user in the process list "
        f"(/proc/PID/cmdline); pass the key as {env_name('api_key')} or in a file named by "
        f"--api-key-file / {env_name('api_key_file')}",
    )


def choice_list(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse ``type`` for ``--flag a,b``: one or more names, each one of ``choices``."""

    def parse(value: str) -> list[str]:
        names = [v.strip() for v in value.split(",") if v.strip()]
        unknown = [n for n in names if n not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from: {', '.join(choices)}"
            )
        return names

    return parse


_quantization_list = choice_list(QUANTIZATIONS, "quantization")
"""Parse ``--quantizations a,b``, rejecting names tokenbooth does not build."""


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
        choices=QUANTIZATIONS,
    )
    build.add_argument("--output", type=Path, default=None, help="write here instead of the cache")
    build.add_argument("--models-dir", type=Path, default=None, help="model cache directory")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")

    evaluate = model_sub.add_parser(
        "eval",
        help="measure each quantization's quality, size and memory against float32",
        description="Builds each quantization (reusing the model cache) and measures it against "
        "the float32 build: perplexity on held-out text, greedy agreement, known-answer tasks, "
        "size on disk, RSS added by loading and load time. Prints a table and writes "
        "quality.json and quality.csv.",
    )
    evaluate.add_argument(
        "--model",
        dest="source",
        type=Path,
        default=None,
        help="GGUF file or HF dir (default: the built-in SmolLM2-135M-Instruct GGUF)",
    )
    evaluate.add_argument(
        "--quantizations",
        type=_quantization_list,
        default=None,
        help="comma-separated, e.g. int8,int8_float32 (default: every one CTranslate2 runs "
        f"on the device, of {', '.join(QUANTIZATIONS)}); float32 is always measured",
    )
    evaluate.add_argument(
        "--output",
        type=Path,
        default=None,
        help="directory for quality.json and quality.csv (default: <models dir>/<model>-quality)",
    )
    evaluate.add_argument("--models-dir", type=Path, default=None, help="model cache directory")
    evaluate.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    evaluate.add_argument(
        "--agreement-tokens",
        type=int,
        default=32,
        help="N: greedy continuations must equal the reference's first N tokens (default: 32)",
    )

    serve = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible service",
        description="Serve a model over an OpenAI-compatible HTTP API with dynamic batching.",
    )
    add_settings_flags(serve)

    # Later stages (bench, sweep, report) plug in through entry points, so this module never
    # imports packages that depend on it.
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:
            # A broken plugin must not take `serve` down with it; say so on every use.
            print(f"tokenbooth: subcommand {ep.name!r} unavailable: {exc}", file=sys.stderr)
            continue
        before = set(sub.choices)
        register(sub)
        # The extra named in the entry point ("... [loadgen]") is checked before the command
        # runs (main), so a serving-only install gets one line naming it.
        for name in set(sub.choices) - before:
            sub.choices[name].set_defaults(_needs_extras=tuple(ep.extras))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokenbooth`` console script."""
    args = build_parser().parse_args(argv)
    from service.errors import TokenboothError

    try:
        if args.command == "model" and args.model_command == "eval":
            from service.models.eval import run_eval_command

            configure_logging("INFO", json_format=False)
            run_eval_command(
                args.source,
                args.quantizations,
                output=args.output,
                models_dir=args.models_dir,
                device=args.device,
                agreement_tokens=args.agreement_tokens,
            )
            return 0
        if args.command == "model":
            from service.models import build_model

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

            settings = settings_from_args(args)
            configure_logging(settings.log_level, json_format=settings.log_json)
            warn_api_key_flag(args)
            return serve(settings)
        if getattr(args, "func", None) is not None:
            missing = missing_extra(args.command, getattr(args, "_needs_extras", ()))
            if missing is not None:
                print(f"tokenbooth: error: {missing}", file=sys.stderr)
                return 2
            code: int = args.func(args)
            return code
    except TokenboothError as exc:
        print(f"tokenbooth: error: {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
