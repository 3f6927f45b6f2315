"""Raw CTranslate2 engine per thread layout and CPU backend option, side by side in one run.

For each variant (``workers x intra_threads``, optionally with CTranslate2 environment
options such as ``CT2_FORCE_CPU_ISA=AVX512``), a fresh process loads the default model and
measures, with greedy fixed-length generation of ~94-token prompts:

1. one lone request: time to first token and the per-token gap (single-stream ITL);
2. ``workers`` concurrent batches of ``--batch`` requests: output tokens/s.

Variants run in alternating order for ``--repeats`` rounds (each its own process, because the
CTranslate2 environment options are read once per process); medians and min-max are printed.
This answers "does a second thread per batch make one stream faster" without the HTTP
service in the way.

Run from the repository root::

    .venv/bin/python -m scripts.bench_layouts [--repeats 3] \\
        --variant 2x1 --variant 1x2 --variant 2x2 --variant 2x1:CT2_FORCE_CPU_ISA=AVX512
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["main", "measure_variant"]

_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "small",
    "birds",
    "sing",
]


def _prompt(tokenizer: Any, i: int, n_tokens: int) -> list[str]:
    text = " ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(n_tokens)) + f" {i}"
    tokens: list[str] = tokenizer.encode(text).tokens[:n_tokens]
    return tokens


def measure_variant(
    workers: int, intra: int, *, batch: int, max_tokens: int, prompt_tokens: int
) -> dict[str, float]:
    """Load the default model with this layout and measure one lone request and full batches."""
    import ctranslate2

    from service.models import load_model_files
    from service.models.build import resolve_model

    model_dir = resolve_model(None, "int8")
    tokenizer = load_model_files(model_dir).tokenizer
    gen = ctranslate2.Generator(
        str(model_dir),
        device="cpu",
        compute_type="int8",
        inter_threads=workers,
        intra_threads=intra,
    )

    def run(prompts: list[list[str]], n: int) -> tuple[float, float]:
        stamps: list[float] = []

        def on_step(step: Any) -> bool:
            if step.batch_id == 0:
                stamps.append(time.perf_counter())
            return False

        t0 = time.perf_counter()
        gen.generate_batch(
            prompts,
            max_length=n,
            sampling_topk=1,
            include_prompt_in_result=False,
            end_token=[],
            callback=on_step,
        )
        return stamps[0] - t0, (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)

    run([_prompt(tokenizer, 0, prompt_tokens)], 4)  # warm-up
    ttft, itl = run([_prompt(tokenizer, 1, prompt_tokens)], max_tokens)

    def full_batch(k: int) -> None:
        run(
            [_prompt(tokenizer, 100 * (k + 2) + i, prompt_tokens) for i in range(batch)], max_tokens
        )

    threads = [threading.Thread(target=full_batch, args=(k,)) for k in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {
        "ttft_ms": ttft * 1000,
        "itl_ms": itl * 1000,
        "tokens_per_s": workers * batch * max_tokens / elapsed,
    }


def _parse_variant(text: str) -> tuple[int, int, dict[str, str]]:
    layout, _, env_text = text.partition(":")
    w, _, t = layout.partition("x")
    env = dict(kv.split("=", 1) for kv in env_text.split(",") if kv)
    return int(w), int(t), env


def main(argv: list[str] | None = None) -> int:
    """Run every variant in its own process, alternating, and print medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="WORKERSxINTRA[:ENV=V,...] (default: 2x1, 1x2, 2x2)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=94)
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        w, t, _ = _parse_variant(args.child)
        res = measure_variant(
            w, t, batch=args.batch, max_tokens=args.max_tokens, prompt_tokens=args.prompt_tokens
        )
        print(json.dumps(res), flush=True)
        # CTranslate2's worker threads can abort the interpreter's exit; the figures are out.
        os._exit(0)
    variants = args.variant or ["2x1", "1x2", "2x2"]
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            _, _, env = _parse_variant(v)
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "scripts.bench_layouts",
                    "--child",
                    v,
                    "--batch",
                    str(args.batch),
                    "--max-tokens",
                    str(args.max_tokens),
                    "--prompt-tokens",
                    str(args.prompt_tokens),
                ],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if not lines:
                print(f"{v}: failed: {out.stderr.strip()[-300:]}", file=sys.stderr)
                continue
            results[v].append(json.loads(lines[-1]))
    print(
        f"raw engine, {os.cpu_count()} CPUs, {args.repeats} alternating rounds, "
        f"prompt {args.prompt_tokens} tokens, {args.max_tokens} output tokens, "
        f"batches of {args.batch} (one per worker at once)"
    )
    print(f"{'variant':<34} {'TTFT ms':>16} {'ITL ms (1 stream)':>20} {'batched tok/s':>18}")
    base_itl = None
    for v, rs in results.items():
        if not rs:
            print(f"{v:<34} failed")
            continue

        def cell(key: str, rs: list[dict[str, float]] = rs) -> str:
            xs = [r[key] for r in rs]
            return f"{statistics.median(xs):.1f} ({min(xs):.0f}-{max(xs):.0f})"

        itl = statistics.median(r["itl_ms"] for r in rs)
        base_itl = base_itl or itl
        print(
            f"{v:<34} {cell('ttft_ms'):>16} {cell('itl_ms'):>20} {cell('tokens_per_s'):>18}"
            f"  ITL x{itl / base_itl:.2f} of the first"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
