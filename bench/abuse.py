"""``tokenbooth bench abuse``: hostile-client scenarios against a real replica, with targets.

Reruns the hostile review's scenarios, each bounded in connections and time, each on its own
``tokenbooth serve`` process on loopback (the fake engine unless ``--engine`` says otherwise):

* ``slowloris`` (:mod:`bench.abuse_slowloris`): connections that never finish a request;
* ``stalled`` (:mod:`bench.abuse_stalled`): streams whose clients stop reading;
* ``large-prompt`` (:mod:`bench.abuse_large_prompt`): 1 MiB prompts beside a normal stream;
* ``drain`` (:mod:`bench.abuse_drain`): SIGTERM with requests outlasting the drain timeout.

Prints a table per scenario and one PASS/FAIL line per scenario against its targets, and
exits non-zero on any FAIL (``no_fail`` to always exit 0).
"""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from bench.abuse_common import ScenarioResult, with_defaults
from service.settings import ServiceSettings

__all__ = ["SCENARIOS", "AbuseSizes", "report", "run_abuse_bench", "run_scenarios", "to_json"]

SCENARIOS: Final = ("slowloris", "stalled", "large-prompt", "drain")
_LABEL_WIDTH: Final = 58


@dataclass(frozen=True)
class AbuseSizes:
    """How big each scenario is (connections, streams, bytes, tokens)."""

    slowloris_connections: int = 300
    stalled_streams: int = 8
    stalled_max_tokens: int | None = None  # None: enough to overflow kernel buffers (fake)
    stalled_read_bytes: int = 5000
    large_prompt_requests: int = 8
    large_prompt_bytes: int = 1 << 20
    large_prompt_stream_tokens: int = 300
    drain_streams: int = 8
    drain_max_tokens: int = 400


def _runner(name: str, sizes: AbuseSizes) -> Callable[[ServiceSettings], ScenarioResult]:
    # Imported here: each scenario module pulls in the HTTP client stack.
    if name == "slowloris":
        from bench.abuse_slowloris import run_slowloris

        return lambda s: run_slowloris(s, connections=sizes.slowloris_connections)
    if name == "stalled":
        from bench.abuse_stalled import run_stalled

        return lambda s: run_stalled(
            s,
            streams=sizes.stalled_streams,
            max_tokens=sizes.stalled_max_tokens,
            read_bytes=sizes.stalled_read_bytes,
        )
    if name == "large-prompt":
        from bench.abuse_large_prompt import run_large_prompt

        return lambda s: run_large_prompt(
            s,
            requests=sizes.large_prompt_requests,
            prompt_bytes=sizes.large_prompt_bytes,
            stream_tokens=sizes.large_prompt_stream_tokens,
        )
    if name == "drain":
        from bench.abuse_drain import run_drain

        return lambda s: run_drain(
            s, streams=sizes.drain_streams, max_tokens=sizes.drain_max_tokens
        )
    raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")


def run_scenarios(
    settings: ServiceSettings, scenarios: Sequence[str], sizes: AbuseSizes
) -> list[ScenarioResult]:
    """Run ``scenarios`` in order, each on its own replica; a scenario that fails to run is
    reported as a FAIL with its error, and the others still run."""
    settings = with_defaults(settings, {"engine": "fake"})
    results: list[ScenarioResult] = []
    for name in scenarios:
        run = _runner(name, sizes)
        try:
            results.append(run(settings))
        except Exception as exc:  # one broken scenario must not hide the others' figures
            failed = ScenarioResult(name)
            failed.row("error", f"{type(exc).__name__}: {exc}")
            failed.notes.append(traceback.format_exc(limit=3).strip().splitlines()[-1])
            failed.check("scenario ran", "no", "yes", False)
            results.append(failed)
    return results


def report(results: Sequence[ScenarioResult], settings: ServiceSettings) -> list[str]:
    """The tables, each scenario's checks and one summary line per scenario."""
    engine = with_defaults(settings, {"engine": "fake"}).engine
    lines = [f"tokenbooth bench abuse: engine {engine}, each scenario on its own replica"]
    for r in results:
        lines.append("")
        lines.append(f"== {r.name} ==")
        for label, value in r.rows:
            lines.append(f"  {label:<{_LABEL_WIDTH}} {value}")
        for note in r.notes:
            lines.append(f"  note: {note}")
        for c in r.checks:
            mark = "ok  " if c.ok else "FAIL"
            lines.append(f"  [{mark}] {c.name}: {c.value} (target {c.target})")
    lines.append("")
    lines.append("== summary ==")
    for r in results:
        met = sum(1 for c in r.checks if c.ok)
        failed = "; ".join(f"{c.name}: {c.value}" for c in r.checks if not c.ok)
        tail = f" ({failed})" if failed else ""
        lines.append(
            f"{r.name:<13} {'PASS' if r.ok else 'FAIL'}  {met} of {len(r.checks)} targets{tail}"
        )
    return lines


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, tuples lists, keys strings."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def to_json(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """Every scenario's figures, checks and verdict."""
    return {
        "scenarios": {
            r.name: {
                "ok": r.ok,
                "figures": _clean(r.figures),
                "checks": [_clean(asdict(c)) for c in r.checks],
                "notes": r.notes,
                "rows": [list(row) for row in r.rows],
            }
            for r in results
        },
        "ok": all(r.ok for r in results),
    }


def run_abuse_bench(
    settings: ServiceSettings,
    *,
    scenarios: Sequence[str] = SCENARIOS,
    sizes: AbuseSizes | None = None,
    json_path: Path | None = None,
    no_fail: bool = False,
) -> int:
    """CLI entry: run, print, optionally write JSON; 1 on any FAIL unless ``no_fail``."""
    for name in scenarios:
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    results = run_scenarios(settings, scenarios, sizes or AbuseSizes())
    for line in report(results, settings):
        print(line, flush=True)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(to_json(results), indent=2) + "\n")
    ok = all(r.ok for r in results)
    return 0 if ok or no_fail else 1
