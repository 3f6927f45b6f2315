"""Generate the small SYNTHETIC traces in loadgen/data/ (not real Mooncake or BurstGPT data).

Both traces are made up here, deterministically from a seed, in the real traces' formats
(read by :mod:`loadgen.traces`): 200 requests over 60 s, a uniform background with bursts.

* ``trace_mooncake.jsonl``: Mooncake's JSONL (``timestamp`` in ms, ``input_length``,
  ``output_length``, ``hash_ids``). 80% of requests open with one of a few shared documents
  (1 or 2 blocks of 512 tokens, the same hash ids in every request that uses one), then one
  partial block of their own (16 to 384 tokens), so a prefix cache has something to find;
  prompts stay at most 1,408 tokens and outputs 8 to 64, small enough for the CPU model.
* ``trace_burstgpt.csv``: BurstGPT's CSV columns (``Timestamp`` in seconds, ``Model``,
  ``Request tokens``, ``Response tokens``, ``Total tokens``, ``Log Type``), a few failed
  requests (0 response tokens) included, as in the real trace.

Usage: ``python -m scripts.make_traces [--out loadgen/data] [--seed 7]``
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loadgen.traces import BLOCK_TOKENS, BURSTGPT_COLUMNS

__all__ = [
    "burstgpt_rows",
    "main",
    "mooncake_rows",
    "send_times",
    "write_burstgpt",
    "write_mooncake",
]

MOONCAKE_FILE = "trace_mooncake.jsonl"
BURSTGPT_FILE = "trace_burstgpt.csv"
_DATA = Path(__file__).resolve().parents[1] / "loadgen" / "data"


def send_times(
    n: int, span_s: float, rng: np.random.Generator, *, bursts: int = 3, burst_share: float = 0.3
) -> npt.NDArray[np.float64]:
    """``n`` sorted send times in ``[0, span_s)``: uniform background plus ``bursts`` bursts.

    A share ``burst_share`` of the requests falls in bursts 2 s wide, at random centres.
    """
    n_burst = int(n * burst_share)
    background = rng.uniform(0.0, span_s, size=n - n_burst)
    centres = rng.uniform(2.0, span_s - 2.0, size=bursts)
    which = rng.integers(0, bursts, size=n_burst)
    burst = centres[which] + rng.uniform(-1.0, 1.0, size=n_burst)
    times = np.sort(np.concatenate([background, burst]))
    times -= times[0]  # the trace starts with its first request
    return times


def mooncake_rows(
    n: int = 200, span_s: float = 60.0, *, seed: int = 7, documents: int = 5
) -> list[dict[str, Any]]:
    """Mooncake-format records; 80% of requests start with one of ``documents`` shared ones."""
    rng = np.random.default_rng(seed)
    times = send_times(n, span_s, rng)
    docs = [[1000 * (d + 1) + b for b in range(int(rng.integers(1, 3)))] for d in range(documents)]
    next_id = 1
    rows = []
    for t in times:
        ids: list[int] = list(docs[int(rng.integers(documents))]) if rng.random() < 0.8 else []
        ids.append(next_id)  # the request's own text: one block of its own
        next_id += 1
        # The last block is partial, as in the real traces: (len - 1) * 512 < input <= len * 512.
        tail = int(rng.integers(16, 385))
        rows.append(
            {
                "timestamp": round(float(t) * 1000),
                "input_length": (len(ids) - 1) * BLOCK_TOKENS + tail,
                "output_length": int(rng.integers(8, 65)),
                "hash_ids": ids,
            }
        )
    return rows


def burstgpt_rows(
    n: int = 200, span_s: float = 60.0, *, seed: int = 7, failed: int = 4
) -> list[dict[str, Any]]:
    """BurstGPT-format rows, ``failed`` of them with 0 response tokens."""
    rng = np.random.default_rng(seed + 1)
    times = send_times(n, span_s, rng)
    fails = set(rng.choice(n, size=failed, replace=False).tolist())
    rows = []
    for i, t in enumerate(times):
        req = int(np.clip(rng.lognormal(5.0, 0.9), 8, 1536))  # fits the fake engine's 2048
        resp = 0 if i in fails else int(np.clip(rng.lognormal(4.2, 0.7), 4, 256))
        rows.append(
            {
                "Timestamp": round(float(t), 3),
                "Model": "ChatGPT" if rng.random() < 0.8 else "GPT-4",
                "Request tokens": req,
                "Response tokens": resp,
                "Total tokens": req + resp,
                "Log Type": "Conversation log" if rng.random() < 0.7 else "API log",
            }
        )
    return rows


def write_mooncake(rows: list[dict[str, Any]], path: Path) -> None:
    """One JSON object a line."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_burstgpt(rows: list[dict[str, Any]], path: Path) -> None:
    """A CSV with BurstGPT's header."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(BURSTGPT_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    """Write both synthetic traces into ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m scripts.make_traces")
    parser.add_argument("--out", type=Path, default=_DATA)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    write_mooncake(mooncake_rows(seed=args.seed), args.out / MOONCAKE_FILE)
    write_burstgpt(burstgpt_rows(seed=args.seed), args.out / BURSTGPT_FILE)
    print(args.out / MOONCAKE_FILE)
    print(args.out / BURSTGPT_FILE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
