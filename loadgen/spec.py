"""Sweep spec (TOML) -> validated dataclasses -> the list of points to run.

Errors name the offending key and the line it is on, e.g.
``spec.toml:14: [load] concurrency: expected a list of positive integers, got "8"``.
The commented reference is ``loadgen/examples/sweep.toml``; field names are stable.
The module is the one parser (the report reads runs with it too) and keeps every key's check
next to its line-numbered error, hence its length.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final, Literal

from loadgen.servers.kinds import AUTO, SERVER_KINDS
from service.errors import TokenboothError
from service.settings import BATCH_POLICIES, DEFAULT_BATCH_POLICY, QUANTIZATIONS, TRITON_POLICY

__all__ = [
    "RAMP_AUTO",
    "TRACE_FORMATS",
    "LengthDist",
    "LoadLevel",
    "LoadSpec",
    "RunSpec",
    "SLOSpec",
    "ServerConfig",
    "ServerSpec",
    "SpecError",
    "Stage",
    "SweepSpec",
    "TargetSpec",
    "WorkloadSpec",
    "load_spec",
    "parse_spec",
]


class SpecError(TokenboothError):
    """The sweep spec is malformed; the message names the key and its line."""


@dataclass(frozen=True)
class LengthDist:
    """A length-style distribution: fixed, uniform or normal (clipped to [min, max]).

    Token lengths (``[workload] input_tokens``/``output_tokens``) are whole numbers >= 1; the
    same shape gives think times in seconds (``[load] think_time_s``), which may be fractions
    and 0. One type, one parser (``_length``), so both read and fail alike.
    """

    dist: Literal["fixed", "uniform", "normal"] = "fixed"
    value: float = 64
    min: float = 1
    max: float = 1024
    mean: float = 64.0
    std: float = 0.0

    @property
    def expected(self) -> float:
        """The distribution's mean (a normal's clipping ignored): e.g. turns per session."""
        if self.dist == "fixed":
            return float(self.value)
        if self.dist == "uniform":
            return (float(self.min) + float(self.max)) / 2
        return min(max(float(self.mean), float(self.min)), float(self.max))


@dataclass(frozen=True)
class RunSpec:
    """[run]: per-point bounds and validity thresholds."""

    name: str = "sweep"
    duration_s: float = 20.0
    warmup_s: float = 3.0
    # Per point: the window ends after this many measured requests, and the warm-up sends at
    # most this many too (open loop keeps the schedule's last ones before the window; closed-
    # loop users wait for the window): a point sends at most 2 x max_requests in all.
    max_requests: int = 2000
    repeats: int = 1
    seed: int = 42
    lag_threshold_s: float = 0.05
    min_samples: int = 20
    request_timeout_s: float = 120.0
    # Client and server figures per interval of every point (timeslices.parquet); 0: none.
    timeslice_s: float = 2.0
    # Open loop: a point whose in-flight requests (or send backlog) grow this long ends early,
    # status "saturated"; 0: never.
    saturation_s: float = 10.0


@dataclass(frozen=True)
class TargetSpec:
    """[target]: local replicas started by the harness, or remote URLs."""

    kind: Literal["local", "remote"] = "local"
    model: str = ""
    engine: Literal["ctranslate2", "fake"] = "ctranslate2"
    balance: Literal["least_outstanding", "round_robin"] = "least_outstanding"
    ready_timeout_s: float = 300.0
    urls: tuple[str, ...] = ()
    hook: str = ""
    api_key_env: str = ""
    # The server's kind (loadgen.servers): "auto" detects it from /metrics, /v1/models, headers.
    server: str = AUTO
    # Readiness path; "" tries /health/ready, /health, then /v1/models (first 200 wins).
    ready_path: str = ""


@dataclass(frozen=True)
class ServerSpec:
    """[server]: dimensions of the server configuration space."""

    replicas: tuple[int, ...] = (1,)
    max_batch_size: tuple[int, ...] = (8,)
    max_batch_delay_ms: tuple[float, ...] = (5.0,)
    batch_workers: tuple[int, ...] = (1,)
    intra_threads: tuple[int, ...] = (1,)
    quantization: tuple[str, ...] = ("int8",)
    batch_policy: tuple[str, ...] = (DEFAULT_BATCH_POLICY,)
    # Spare batch workers (service.formation.worker_available). A sweep runs what it lists:
    # none unless asked, as batch_workers defaults to 1 here whatever `tokenbooth serve` uses.
    spare_workers: tuple[int, ...] = (0,)
    env: dict[str, str] = field(default_factory=dict)
    # A listed subset instead of the cross product: each entry fixes some dimensions; the
    # others take their first listed value.
    configs: tuple[dict[str, Any], ...] = ()


RAMP_AUTO: Final = "auto"
"""``[load] ramp_s`` value (and default): one request's duration, measured at the point's start."""


@dataclass(frozen=True)
class Stage:
    """One stage of a ``[load] stages`` profile: a level held, or ramped linearly, for a time.

    ``start`` and ``end`` are the level (requests/s, or users) at the stage's start and end;
    equal for a steady stage. Steps and spikes are sequences of steady stages.
    """

    duration_s: float
    mode: Literal["rate", "concurrency"]
    start: float
    end: float

    @property
    def is_ramp(self) -> bool:
        """Whether the level changes over the stage."""
        return self.start != self.end

    @property
    def mean(self) -> float:
        """The stage's time-averaged level: what the report plots it at."""
        return (self.start + self.end) / 2


@dataclass(frozen=True)
class LoadSpec:
    """[load]: closed-loop concurrency, open-loop rates, auto, or a profile of stages.

    Closed loop only: ``ramp_s`` spreads the users' first sends evenly over that many seconds
    (``None``: :data:`RAMP_AUTO`; ``0``: all at once, the old lockstep start), and
    ``think_time_s`` is a pause drawn after each response before the next send (``None``: none).
    """

    mode: Literal["concurrency", "rate", "auto", "slo_search", "stages"] = "concurrency"
    concurrency: tuple[int, ...] = (1, 4, 8)
    rate: tuple[float, ...] = (1.0, 2.0, 4.0)
    arrival: Literal["poisson", "constant", "gamma"] = "poisson"
    auto_points: int = 5
    workers: int = 0
    ramp_s: float | None = None
    think_time_s: LengthDist | None = None
    # Gamma arrivals' shape (vLLM's --burstiness): 1 Poisson, < 1 burstier, > 1 more regular.
    burstiness: float = 1.0
    # mode = "stages": one continuous run through these, each stage its own point.
    stages: tuple[Stage, ...] = ()
    # slo_search: the highest open-loop rate meeting [slo], bracketed between these rates to
    # within search_tolerance (relative width) in at most search_max_points points.
    search_min_rate: float = 1.0
    search_max_rate: float = 64.0
    search_tolerance: float = 0.05
    search_max_points: int = 6


@dataclass(frozen=True)
class WorkloadSpec:
    """[workload]: what each request asks for."""

    kind: Literal["synthetic", "file", "sessions", "trace"] = "synthetic"
    api: Literal["chat", "completions"] = "chat"
    input_tokens: LengthDist = LengthDist(dist="fixed", value=64)
    output_tokens: LengthDist = LengthDist(dist="fixed", value=32)
    ignore_eos: bool = True
    temperature: float = 0.0
    path: str = ""
    # file: "jsonl" | "sharegpt"; trace (loadgen.traces): "mooncake" (the default) | "burstgpt"
    format: Literal["jsonl", "sharegpt", "mooncake", "burstgpt"] = "jsonl"
    # trace: replay speed; 2 sends twice as fast as the trace's timestamps, 0.5 half as fast.
    time_scale: float = 1.0
    # How synthetic prompts are measured in tokens: "" (the server's /tokenize when it has one,
    # else the built-in model's tokenizer, with a warning), "server", or a tokenizer.json file
    # or Hugging Face model directory (loaded offline).
    tokenizer: str = ""
    # kind = "sessions" (loadgen.sessions): turns per session, and the pause (seconds) between a
    # reply and the session's next user message; input_tokens/output_tokens are per turn.
    turns: LengthDist = LengthDist(dist="fixed", value=4, min=4, max=4)
    turn_think_time_s: LengthDist | None = None
    # Shared prefixes (synthetic and sessions): each request starts with one of prefix_groups
    # system prompts of prefix_tokens tokens, its group drawn at random with the seed.
    prefix_groups: int = 0
    prefix_tokens: int = 0


@dataclass(frozen=True)
class SLOSpec:
    """[slo]: the latency/error objectives capacity is judged against."""

    ttft_p95_s: float | None = None
    tpot_p95_s: float | None = None
    e2e_p95_s: float | None = None
    max_error_rate: float | None = 0.01

    def describe(self) -> str:
        """One line naming every checked term, e.g. ``TTFT p95 ≤ 1 s, error rate ≤ 1.00%``."""
        parts = []
        if self.ttft_p95_s is not None:
            parts.append(f"TTFT p95 ≤ {self.ttft_p95_s:g} s")
        if self.tpot_p95_s is not None:
            parts.append(f"TPOT p95 ≤ {self.tpot_p95_s:g} s")
        if self.e2e_p95_s is not None:
            parts.append(f"E2E p95 ≤ {self.e2e_p95_s:g} s")
        if self.max_error_rate is not None:
            parts.append(f"error rate ≤ {self.max_error_rate:.2%}")
        return ", ".join(parts) if parts else "no SLO given"


@dataclass(frozen=True)
class ServerConfig:
    """One server configuration of the sweep (one set of replicas)."""

    replicas: int
    max_batch_size: int
    max_batch_delay_ms: float
    batch_workers: int
    intra_threads: int
    quantization: str
    batch_policy: str = DEFAULT_BATCH_POLICY
    spare_workers: int = 0

    @property
    def config_id(self) -> str:
        """Stable, readable, exact id, e.g. ``r2-b8-d5-w1-t1-int8``.

        The delay is written exactly (``5``, ``2.5``, ``5.0000004``): the id keys the sweep's
        points and the report's curves, so two delays must never share one.
        """
        delay = float(self.max_batch_delay_ms)
        d = str(int(delay)) if delay.is_integer() else repr(delay)
        # The default policy adds nothing, so ids of runs from before policies existed hold.
        policy = "" if self.batch_policy == TRITON_POLICY else f"-{self.batch_policy}"
        spare = f"-s{self.spare_workers}" if self.spare_workers else ""
        return (
            f"r{self.replicas}-b{self.max_batch_size}-d{d}"
            f"-w{self.batch_workers}{spare}-t{self.intra_threads}-{self.quantization}{policy}"
        )


@dataclass(frozen=True)
class LoadLevel:
    """One load level: a concurrency (closed loop) or an offered rate (open loop).

    A stage of a profile has its index in ``stage`` and its mean level as ``value``. With a
    sessions workload each open-loop arrival starts a session: ``value`` is sessions/s and
    ``turns_per_arrival`` the mean turns (requests) per session; otherwise it is ``None``.
    """

    mode: Literal["concurrency", "rate"]
    value: float
    arrival: Literal["closed", "poisson", "constant", "gamma", "trace"]
    stage: int | None = None
    turns_per_arrival: float | None = None

    @property
    def sessions_per_s(self) -> float:
        """Open loop with sessions: the offered sessions/s; NaN otherwise."""
        sessions = self.mode == "rate" and self.turns_per_arrival is not None
        return self.value if sessions else math.nan

    @property
    def requests_per_s(self) -> float:
        """Offered requests/s (sessions/s x mean turns for sessions); NaN for closed loop."""
        if self.mode != "rate":
            return math.nan
        return self.value * (self.turns_per_arrival or 1.0)

    @property
    def key(self) -> str:
        """Stable id within a configuration."""
        base = f"{self.mode}={self.value:g}/{self.arrival}"
        return base if self.stage is None else f"{base}@stage{self.stage}"


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, validated sweep spec."""

    run: RunSpec
    target: TargetSpec
    server: ServerSpec
    load: LoadSpec
    workload: WorkloadSpec
    slo: SLOSpec
    target_rps: float | None
    text: str
    path: str
    # [report] quality: measure each quantization's quality once per run (loadgen.quality);
    # None (absent): when a local ctranslate2 target sweeps two or more quantizations.
    quality: bool | None = None

    def configs(self) -> list[ServerConfig]:
        """The cross product of the [server] dimensions, in spec order."""
        s = self.server
        if s.configs:
            return [
                ServerConfig(
                    replicas=c.get("replicas", s.replicas[0]),
                    max_batch_size=c.get("max_batch_size", s.max_batch_size[0]),
                    max_batch_delay_ms=c.get("max_batch_delay_ms", s.max_batch_delay_ms[0]),
                    batch_workers=c.get("batch_workers", s.batch_workers[0]),
                    intra_threads=c.get("intra_threads", s.intra_threads[0]),
                    quantization=c.get("quantization", s.quantization[0]),
                    batch_policy=c.get("batch_policy", s.batch_policy[0]),
                    spare_workers=c.get("spare_workers", s.spare_workers[0]),
                )
                for c in s.configs
            ]
        return [
            ServerConfig(*combo)
            for combo in itertools.product(
                s.replicas,
                s.max_batch_size,
                s.max_batch_delay_ms,
                s.batch_workers,
                s.intra_threads,
                s.quantization,
                s.batch_policy,
                s.spare_workers,
            )
        ]

    def levels(self) -> list[LoadLevel]:
        """Explicit load levels (none for ``auto``, ``slo_search``, traces: found by the runner)."""
        if self.workload.kind == "trace":
            return []  # one replay per configuration, at the trace's own rate (loadgen.traces)
        if self.load.mode == "concurrency":
            return [LoadLevel("concurrency", float(c), "closed") for c in self.load.concurrency]
        turns = self.turns_per_arrival
        if self.load.mode == "rate":
            return [
                LoadLevel("rate", float(r), self.load.arrival, turns_per_arrival=turns)
                for r in self.load.rate
            ]
        if self.load.mode == "stages":
            return [
                LoadLevel(
                    st.mode,
                    st.mean,
                    "closed" if st.mode == "concurrency" else self.load.arrival,
                    stage=i,
                    turns_per_arrival=turns if st.mode == "rate" else None,
                )
                for i, st in enumerate(self.load.stages)
            ]
        return []

    @property
    def open_loop(self) -> bool:
        """Whether any point follows an arrival schedule (what ``[run] saturation_s`` watches)."""
        return _open_loop(self.load, self.workload.kind)

    @property
    def turns_per_arrival(self) -> float | None:
        """Requests per open-loop arrival: a session's mean turns; ``None`` outside sessions."""
        return self.workload.turns.expected if self.workload.kind == "sessions" else None


_SECTIONS = ("run", "target", "server", "load", "workload", "slo", "report")


class _Ctx:
    def __init__(self, text: str, path: str) -> None:
        self.lines = text.splitlines()
        self.path = path

    def line_of(self, section: str, key: str | None, nth: int = 0) -> int:
        """1-based line of ``key`` inside ``[section]`` (or of the header), 0 if unknown.

        A key given as its own table (``[load.stages]``, or ``[[load.stages]]`` entries, of
        which ``nth`` picks one) is found at that header.
        """
        in_section = False
        header = re.compile(r"^\s*\[(\[?)\s*([A-Za-z0-9_.]+)\s*\]\s*(\]?)")
        seen = 0
        for i, raw in enumerate(self.lines, 1):
            m = header.match(raw)
            if m:
                name = m.group(2)
                in_section = name == section
                if in_section and key is None:
                    return i
                if key is not None and name == f"{section}.{key}":
                    if not (m.group(1) and m.group(3)) or seen == nth:
                        return i
                    seen += 1
                continue
            if in_section and key is not None and re.match(rf"^\s*{re.escape(key)}\s*=", raw):
                return i
        return 0

    def error(self, section: str, key: str | None, message: str, *, nth: int = 0) -> SpecError:
        line = self.line_of(section, key, nth)
        where = f"{self.path}:{line}" if line else self.path
        name = f"[{section}] {key}" if key else f"[{section}]"
        return SpecError(f"{where}: {name}: {message}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _scalar(ctx: _Ctx, section: str, key: str, value: Any, typ: type, default: Any) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is int and isinstance(value, bool):
        raise ctx.error(section, key, f"expected an integer, got {_describe(value)}")
    if not isinstance(value, typ):
        raise ctx.error(section, key, f"expected {typ.__name__}, got {_describe(value)}")
    return value


def _positive(ctx: _Ctx, section: str, key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ctx.error(section, key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _list(
    ctx: _Ctx, section: str, key: str, value: Any, typ: type, *, allow_zero: bool = False
) -> tuple[Any, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ctx.error(section, key, "must not be empty")
    out = []
    for item in items:
        if typ is float and isinstance(item, int) and not isinstance(item, bool):
            item = float(item)
        if isinstance(item, bool) or not isinstance(item, typ):
            raise ctx.error(
                section, key, f"expected a list of {typ.__name__}, got item {_describe(item)}"
            )
        if isinstance(item, int | float) and (item < 0 or (item == 0 and not allow_zero)):
            raise ctx.error(
                section, key, f"values must be {'>= 0' if allow_zero else '> 0'}, got {item!r}"
            )
        out.append(item)
    return tuple(out)


def _choice(ctx: _Ctx, section: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ctx.error(section, key, f"must be one of {list(choices)}, got {value!r}")
    return str(value)


def _length(ctx: _Ctx, section: str, key: str, value: Any, *, seconds: bool = False) -> LengthDist:
    """A :class:`LengthDist`: whole tokens >= 1, or with ``seconds`` any time >= 0."""
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (seconds or isinstance(value, int))
    ):
        value = {"dist": "fixed", "value": value}
    if not isinstance(value, dict):
        raise ctx.error(
            section,
            key,
            f'expected a table like {{dist = "fixed", value = 64}}, got {_describe(value)}',
        )
    dist = _choice(ctx, section, key, value.get("dist", "fixed"), ("fixed", "uniform", "normal"))
    allowed = {
        "fixed": {"value"},
        "uniform": {"min", "max"},
        "normal": {"mean", "std", "min", "max"},
    }[dist]
    unknown = set(value) - allowed - {"dist"}
    if unknown:
        raise ctx.error(
            section,
            key,
            f"unknown field(s) {sorted(unknown)} for dist {dist!r}; allowed: {sorted(allowed)}",
        )
    kwargs: dict[str, Any] = {"dist": dist}
    for k in allowed:
        if k in value:
            v = value[k]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ctx.error(section, key, f"{k} must be a number, got {_describe(v)}")
            whole = not seconds and k in ("value", "min", "max")
            if whole and not float(v).is_integer():
                raise ctx.error(section, key, f"{k} must be a whole number, got {v!r}")
            kwargs[k] = int(v) if whole else float(v)
    low = 0 if seconds else 1
    if dist == "fixed":
        if "value" not in kwargs or kwargs["value"] < low:
            raise ctx.error(section, key, f"fixed needs value >= {low}")
        kwargs.setdefault("min", kwargs["value"])
        kwargs.setdefault("max", kwargs["value"])
    else:
        for k in ("min", "max") if dist == "uniform" else ("mean", "min", "max"):
            if k not in kwargs:
                raise ctx.error(section, key, f"{dist} needs {k}")
        if kwargs["min"] < low or kwargs["max"] < kwargs["min"]:
            raise ctx.error(section, key, f"needs {low} <= min <= max")
        if dist == "normal" and kwargs.get("std", 0.0) < 0:
            raise ctx.error(section, key, "std must be >= 0")
    return LengthDist(**kwargs)


def _ramp(ctx: _Ctx, value: Any) -> float | None:
    if value == RAMP_AUTO:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.error(
            "load", "ramp_s", f'expected seconds >= 0 or "{RAMP_AUTO}", got {_describe(value)}'
        )
    _positive(ctx, "load", "ramp_s", float(value), allow_zero=True)
    return float(value)


def _burstiness(ctx: _Ctx, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.error("load", "burstiness", f"expected a number > 0, got {_describe(value)}")
    if not (0 < value < math.inf):
        raise ctx.error("load", "burstiness", f"must be a finite number > 0, got {value!r}")
    return float(value)


_STAGE_LEVELS: Final[dict[str, tuple[Literal["rate", "concurrency"], type]]] = {
    "rate": ("rate", float),
    "rate_from": ("rate", float),
    "rate_to": ("rate", float),
    "concurrency": ("concurrency", int),
    "concurrency_from": ("concurrency", int),
    "concurrency_to": ("concurrency", int),
}


def _stage(ctx: _Ctx, i: int, entry: Any) -> Stage:
    """One ``stages`` entry: ``duration_s`` and a level (``rate``/``concurrency``) or a ramp."""

    def bad(message: str) -> SpecError:
        return ctx.error("load", "stages", f"stage {i}: {message}", nth=i)

    if not isinstance(entry, dict):
        raise bad(f"expected a table like {{duration_s = 30, rate = 2}}, got {_describe(entry)}")
    unknown = set(entry) - set(_STAGE_LEVELS) - {"duration_s"}
    if unknown:
        raise bad(f"unknown key(s) {sorted(unknown)}; known: duration_s, {sorted(_STAGE_LEVELS)}")
    duration = entry.get("duration_s")
    if isinstance(duration, bool) or not isinstance(duration, int | float) or not duration > 0:
        raise bad(f"duration_s must be a number > 0, got {duration!r}")
    given = [k for k in _STAGE_LEVELS if k in entry]
    modes = {_STAGE_LEVELS[k][0] for k in given}
    if len(modes) != 1:
        raise bad("give a rate (rate, or rate_from and rate_to) or a concurrency, not both")
    mode = modes.pop()
    steady, ramp = mode in entry, {f"{mode}_from", f"{mode}_to"} & set(entry)
    if steady == bool(ramp) or (ramp and len(ramp) != 2):
        raise bad(f"give {mode} = N for a steady stage, or {mode}_from and {mode}_to for a ramp")
    typ = _STAGE_LEVELS[given[0]][1]
    levels = []
    for k in given if steady else (f"{mode}_from", f"{mode}_to"):
        v = entry[k]
        whole = isinstance(v, int) or (isinstance(v, float) and typ is float)
        if isinstance(v, bool) or not whole or not (0 <= v < math.inf):
            raise bad(f"{k} must be a {'number' if typ is float else 'whole number'} >= 0")
        levels.append(float(v))
    start, end = (levels[0], levels[0]) if steady else (levels[0], levels[1])
    # A rate ramp may start or end at zero (its mean is not); a held level of zero measures
    # nothing, and a closed-loop stage needs a user.
    if (mode == "concurrency" and min(start, end) < 1) or max(start, end) <= 0:
        floor = "concurrency must be >= 1" if mode == "concurrency" else "rate must be > 0"
        raise bad(f"{floor} (a rate ramp may start or end at 0)")
    return Stage(float(duration), mode, start, end)


def _stages(ctx: _Ctx, value: Any) -> tuple[Stage, ...]:
    if not isinstance(value, list) or not value:
        raise ctx.error(
            "load", "stages", f"expected a non-empty list of tables, got {_describe(value)}"
        )
    stages = tuple(_stage(ctx, i, e) for i, e in enumerate(value))
    if len({st.mode for st in stages}) > 1:
        raise ctx.error(
            "load", "stages", "all stages are rate stages (open loop) or all concurrency stages"
        )
    return stages


def _check_stages(ctx: _Ctx, load: LoadSpec, table: dict[str, Any]) -> LoadSpec:
    """``stages`` implies ``mode = "stages"``; that mode needs them."""
    if load.stages and "mode" not in table:
        return replace(load, mode="stages")
    if load.stages and load.mode != "stages":
        raise ctx.error("load", "mode", f'stages need mode = "stages", got {load.mode!r}')
    if load.mode == "stages" and not load.stages:
        raise ctx.error("load", "mode", 'mode = "stages" needs [load] stages = [...]')
    return load


_LOAD_DEFAULTS: Final = LoadSpec()
_SEARCH_KEYS: Final = (
    "search_min_rate",
    "search_max_rate",
    "search_tolerance",
    "search_max_points",
)


def _closed_loop(load: LoadSpec) -> bool:
    """Whether the points are closed-loop users: concurrency levels or concurrency stages."""
    return load.mode == "concurrency" or (load.mode == "stages" and load.stages[0].mode != "rate")


def _open_loop(load: LoadSpec, workload_kind: str) -> bool:
    """Whether any point follows an arrival schedule (auto's rate points included)."""
    return workload_kind == "trace" or not _closed_loop(load)


def _check_load_keys(ctx: _Ctx, load: LoadSpec, table: dict[str, Any]) -> None:
    """[load] keys the mode would silently drop are errors.

    A key counts as set when it differs from its default, so the commented reference
    (``examples/sweep.toml``, every key at its default) still parses in every mode. Of the
    arrivals only gamma is refused in closed loop: templates give every mode one arrival.
    """
    closed = _closed_loop(load)
    opened = not closed
    mode = f'mode = "{load.mode}"' + (
        f" with {'concurrency' if closed else 'rate'} stages" if load.mode == "stages" else ""
    )
    applies: dict[str, tuple[bool, str]] = {
        "arrival": (
            opened or load.arrival != "gamma",
            'open-loop points (rate, auto, slo_search or rate stages): "gamma" shapes arrivals',
        ),
        "burstiness": (
            opened and load.arrival == "gamma",
            'arrival = "gamma" (the gamma shape; other arrivals have none)',
        ),
        # auto's synchronous and saturation points are back-to-back closed loops by definition.
        "think_time_s": (closed, "closed-loop users (concurrency levels or concurrency stages)"),
        "ramp_s": (closed or load.mode == "auto", "closed-loop users (auto's included)"),
        **{k: (load.mode == "slo_search", 'mode = "slo_search"') for k in _SEARCH_KEYS},
    }
    for key, (ok, where) in applies.items():
        if key in table and not ok and getattr(load, key) != getattr(_LOAD_DEFAULTS, key):
            raise ctx.error("load", key, f"only applies to {where}; {mode} ignores it")
    if load.workers > 0 and load.mode == "stages" and closed:
        raise ctx.error(
            "load",
            "workers",
            "concurrency stages run in one process (Locust's LoadTestShape sets the users each "
            "second); use workers = 0, or rate stages",
        )
    if load.search_max_rate <= load.search_min_rate:
        # Name the key the spec sets: a lone search_min_rate above the default maximum.
        if "search_max_rate" in table:
            raise ctx.error(
                "load",
                "search_max_rate",
                f"must be above search_min_rate ({load.search_min_rate:g}), "
                f"got {load.search_max_rate:g}",
            )
        raise ctx.error(
            "load",
            "search_min_rate",
            f"must be below search_max_rate ({load.search_max_rate:g}, its default), "
            f"got {load.search_min_rate:g}",
        )
    if load.search_tolerance >= 1:
        raise ctx.error(
            "load",
            "search_tolerance",
            f"must be < 1 (a relative width), got {load.search_tolerance!r}",
        )
    if load.search_max_points < 2:
        raise ctx.error(
            "load",
            "search_max_points",
            f"must be >= 2 (a bracket needs two points), got {load.search_max_points}",
        )


def _check_run_with_load(
    ctx: _Ctx,
    run: RunSpec,
    run_table: dict[str, Any],
    load: LoadSpec,
    workload_kind: str,
    slo: SLOSpec,
) -> None:
    """[run] and [slo] settings a [load] mode cannot honour are errors."""
    if load.mode == "slo_search":
        if run.repeats > 1:
            raise ctx.error(
                "run",
                "repeats",
                f'mode = "slo_search" measures each probed rate once; got repeats = {run.repeats}'
                " (use repeats = 1)",
            )
        if slo.ttft_p95_s is None and slo.tpot_p95_s is None and slo.e2e_p95_s is None:
            raise ctx.error(
                "load",
                "mode",
                '"slo_search" needs a latency objective in [slo] (ttft_p95_s, tpot_p95_s or '
                "e2e_p95_s): with the error rate alone it only doubles up to search_max_rate",
            )
    explicit = "saturation_s" in run_table and run.saturation_s > 0
    if explicit and load.workers > 0 and _open_loop(load, workload_kind):
        raise ctx.error(
            "run",
            "saturation_s",
            "distributed points (load.workers > 0) are not watched for saturation: the workers "
            "hold the in-flight counts; set saturation_s = 0 or workers = 0",
        )


def _urls(ctx: _Ctx, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(u, str) and u.startswith(("http://", "https://")) for u in value
    ):
        raise ctx.error(
            "target", "urls", f"expected a list of http(s) URLs, got {_describe(value)}"
        )
    return tuple(u.rstrip("/") for u in value)


def _ready_path(ctx: _Ctx, value: Any) -> str:
    path = _scalar(ctx, "target", "ready_path", value, str, None)
    if path and not path.startswith("/"):
        raise ctx.error("target", "ready_path", f'must start with "/", got {_describe(path)}')
    return str(path)


def _env_table(ctx: _Ctx, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(v, str | int | float) for v in value.values()
    ):
        raise ctx.error("server", "env", 'must be a table of strings, e.g. {fake_ttft_ms = "50"}')
    return {str(k): str(v) for k, v in value.items()}


_CONFIG_KEYS: dict[str, type] = {
    "replicas": int,
    "max_batch_size": int,
    "max_batch_delay_ms": float,
    "batch_workers": int,
    "intra_threads": int,
    "quantization": str,
    "batch_policy": str,
    "spare_workers": int,
}


_ZERO_OK_KEYS: Final = frozenset({"spare_workers"})
"""Integer [server] keys whose 0 means "none" (the rest count things that must exist)."""


def _config_list(ctx: _Ctx, value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value or not all(isinstance(c, dict) for c in value):
        raise ctx.error("server", "configs", "expected a non-empty list of tables")
    out = []
    for i, c in enumerate(value):
        entry: dict[str, Any] = {}
        for k, v in c.items():
            typ = _CONFIG_KEYS.get(k)
            if typ is None:
                raise ctx.error("server", "configs", f"entry {i}: unknown key {k!r}")
            if typ is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if isinstance(v, bool) or not isinstance(v, typ):
                raise ctx.error("server", "configs", f"entry {i}: {k} must be {typ.__name__}")
            # The same bounds and choices as the [server] dimension lists.
            floor = 0 if k in _ZERO_OK_KEYS or typ is float else 1
            if isinstance(v, int | float) and v < floor:
                raise ctx.error("server", "configs", f"entry {i}: {k} out of range, got {v!r}")
            if k == "quantization" and v not in QUANTIZATIONS:
                raise ctx.error(
                    "server", "configs", f"entry {i}: quantization must be one of {QUANTIZATIONS}"
                )
            if k == "batch_policy" and v not in BATCH_POLICIES:
                raise ctx.error(
                    "server", "configs", f"entry {i}: batch_policy must be one of {BATCH_POLICIES}"
                )
            entry[k] = v
        out.append(entry)
    return tuple(out)


def _section(ctx: _Ctx, data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ctx.error(name, None, "must be a table")
    return value


def _check_unknown(ctx: _Ctx, section: str, table: dict[str, Any], known: set[str]) -> None:
    for key in table:
        if key not in known:
            raise ctx.error(section, key, f"unknown key; known keys: {sorted(known)}")


def _build(ctx: _Ctx, cls: type, section: str, table: dict[str, Any], conv: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    _check_unknown(ctx, section, table, known)
    kwargs = {}
    for key, value in table.items():
        kwargs[key] = conv[key](value) if key in conv else value
    return cls(**kwargs)


def _check_sessions_and_prefixes(
    ctx: _Ctx, workload: WorkloadSpec, table: dict[str, Any], load: LoadSpec
) -> None:
    """Keys that only mean something together: sessions need chat, prefixes need both counts."""
    if workload.kind != "sessions":
        for key in ("turns", "turn_think_time_s"):
            if key in table:
                raise ctx.error("workload", key, 'only applies to kind = "sessions"')
    else:
        if workload.api != "chat":
            raise ctx.error(
                "workload",
                "api" if "api" in table else "kind",
                'sessions send the conversation history as chat messages: needs api = "chat"',
            )
        if load.mode in ("auto", "slo_search"):
            raise ctx.error(
                "load",
                "mode",
                f"{load.mode!r} searches request rates, while a sessions workload offers "
                'sessions/s: use "concurrency" or "rate" with kind = "sessions"',
            )
    if (workload.prefix_groups > 0) != (workload.prefix_tokens > 0):
        given, missing = ("prefix_groups", "prefix_tokens")[:: 1 if workload.prefix_groups else -1]
        raise ctx.error(
            "workload",
            given,
            f"needs {missing} > 0 too (prefix_groups and prefix_tokens go together, or both 0)",
        )
    if workload.prefix_groups > 0 and workload.kind not in ("synthetic", "sessions"):
        raise ctx.error(
            "workload", "prefix_groups", 'shared prefixes apply to kind = "synthetic" or "sessions"'
        )


TRACE_FORMATS: Final = ("mooncake", "burstgpt")
"""``[workload] format`` values of a trace workload (read by :mod:`loadgen.traces`)."""
# [load] keys a trace replay keeps: the trace sets every send time, so levels do not apply.
_TRACE_LOAD_KEYS: Final = frozenset({"workers"})


def _check_trace(
    ctx: _Ctx, workload: WorkloadSpec, table: dict[str, Any], load_table: Any
) -> WorkloadSpec:
    """A trace workload: a trace format (default mooncake), lengths and timing from the trace.

    Keys a trace overrides are errors rather than silently ignored: [load] levels (the trace
    is one open-loop point at its own rate) and [workload] length distributions.
    """
    if workload.kind != "trace":
        if "time_scale" in table:
            raise ctx.error("workload", "time_scale", 'only applies to kind = "trace"')
        if workload.format in TRACE_FORMATS:
            raise ctx.error(
                "workload", "format", f'{workload.format!r} is a trace format: use kind = "trace"'
            )
        return workload
    for key in ("input_tokens", "output_tokens", "prefix_groups", "prefix_tokens"):
        if key in table:
            raise ctx.error(
                "workload", key, "a trace workload takes its lengths and prefixes from the trace"
            )
    if isinstance(load_table, dict):
        for key in load_table:
            if key not in _TRACE_LOAD_KEYS:
                raise ctx.error(
                    "load",
                    key,
                    "a trace workload replays the trace's own send times as one open-loop "
                    f"point; [load] levels do not apply (only {sorted(_TRACE_LOAD_KEYS)} may "
                    "be set)",
                )
    if "format" not in table:
        return replace(workload, format="mooncake")
    if workload.format not in TRACE_FORMATS:
        raise ctx.error(
            "workload",
            "format",
            f"a trace workload needs one of {list(TRACE_FORMATS)}, got {workload.format!r}",
        )
    return workload


def parse_spec(text: str, path: str = "<spec>", *, check_files: bool = True) -> SweepSpec:
    """Parse and validate spec text; raise :class:`SpecError` naming the key and line.

    Args:
        text: TOML text.
        path: Where it came from (error messages; relative workload paths resolve against it).
        check_files: Require a file workload's file to exist. A report reading a finished run's
            stored spec passes ``False``: the run is over and its rows are in the run directory.
    """
    ctx = _Ctx(text, path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from exc
    for key in data:
        if key not in _SECTIONS:
            line = ctx.line_of(key, None)
            where = f"{path}:{line}" if line else path
            raise SpecError(f"{where}: unknown section [{key}]; known: {list(_SECTIONS)}")

    def num(section: str, key: str, typ: type = float, allow_zero: bool = False) -> Any:
        def conv(v: Any) -> Any:
            v = _scalar(ctx, section, key, v, typ, None)
            _positive(ctx, section, key, v, allow_zero=allow_zero)
            return v

        return conv

    run = _build(
        ctx,
        RunSpec,
        "run",
        _section(ctx, data, "run"),
        {
            "name": lambda v: _scalar(ctx, "run", "name", v, str, None),
            "duration_s": num("run", "duration_s"),
            "warmup_s": num("run", "warmup_s", allow_zero=True),
            "max_requests": num("run", "max_requests", int),
            "repeats": num("run", "repeats", int),
            "seed": lambda v: _scalar(ctx, "run", "seed", v, int, None),
            "lag_threshold_s": num("run", "lag_threshold_s"),
            "min_samples": num("run", "min_samples", int, allow_zero=True),
            "request_timeout_s": num("run", "request_timeout_s"),
            "timeslice_s": num("run", "timeslice_s", allow_zero=True),
            "saturation_s": num("run", "saturation_s", allow_zero=True),
        },
    )
    target = _build(
        ctx,
        TargetSpec,
        "target",
        _section(ctx, data, "target"),
        {
            "kind": lambda v: _choice(ctx, "target", "kind", v, ("local", "remote")),
            "model": lambda v: _scalar(ctx, "target", "model", v, str, None),
            "engine": lambda v: _choice(ctx, "target", "engine", v, ("ctranslate2", "fake")),
            "balance": lambda v: _choice(
                ctx, "target", "balance", v, ("least_outstanding", "round_robin")
            ),
            "ready_timeout_s": num("target", "ready_timeout_s"),
            "urls": lambda v: _urls(ctx, v),
            "hook": lambda v: _scalar(ctx, "target", "hook", v, str, None),
            "api_key_env": lambda v: _scalar(ctx, "target", "api_key_env", v, str, None),
            "server": lambda v: _choice(ctx, "target", "server", v, (AUTO, *SERVER_KINDS)),
            "ready_path": lambda v: _ready_path(ctx, v),
        },
    )
    if target.kind == "remote" and not target.urls:
        raise ctx.error("target", "urls", "a remote target needs at least one URL")
    server_tab = _section(ctx, data, "server")
    server = _build(
        ctx,
        ServerSpec,
        "server",
        server_tab,
        {
            "replicas": lambda v: _list(ctx, "server", "replicas", v, int),
            "max_batch_size": lambda v: _list(ctx, "server", "max_batch_size", v, int),
            "max_batch_delay_ms": lambda v: _list(
                ctx, "server", "max_batch_delay_ms", v, float, allow_zero=True
            ),
            "batch_workers": lambda v: _list(ctx, "server", "batch_workers", v, int),
            "intra_threads": lambda v: _list(ctx, "server", "intra_threads", v, int),
            "spare_workers": lambda v: _list(
                ctx, "server", "spare_workers", v, int, allow_zero=True
            ),
            "quantization": lambda v: tuple(
                _choice(
                    ctx,
                    "server",
                    "quantization",
                    q,
                    QUANTIZATIONS,
                )
                for q in (v if isinstance(v, list) else [v])
            ),
            "batch_policy": lambda v: tuple(
                _choice(ctx, "server", "batch_policy", p, BATCH_POLICIES)
                for p in (v if isinstance(v, list) else [v])
            ),
            "env": lambda v: _env_table(ctx, v),
            "configs": lambda v: _config_list(ctx, v),
        },
    )
    load = _build(
        ctx,
        LoadSpec,
        "load",
        _section(ctx, data, "load"),
        {
            "mode": lambda v: _choice(
                ctx, "load", "mode", v, ("concurrency", "rate", "auto", "slo_search", "stages")
            ),
            "concurrency": lambda v: _list(ctx, "load", "concurrency", v, int),
            "rate": lambda v: _list(ctx, "load", "rate", v, float),
            "arrival": lambda v: _choice(
                ctx, "load", "arrival", v, ("poisson", "constant", "gamma")
            ),
            "auto_points": num("load", "auto_points", int),
            "workers": num("load", "workers", int, allow_zero=True),
            "ramp_s": lambda v: _ramp(ctx, v),
            "think_time_s": lambda v: _length(ctx, "load", "think_time_s", v, seconds=True),
            "burstiness": lambda v: _burstiness(ctx, v),
            "stages": lambda v: _stages(ctx, v),
            "search_min_rate": num("load", "search_min_rate"),
            "search_max_rate": num("load", "search_max_rate"),
            "search_tolerance": num("load", "search_tolerance"),
            "search_max_points": num("load", "search_max_points", int),
        },
    )
    load = _check_stages(ctx, load, _section(ctx, data, "load"))
    workload = _build(
        ctx,
        WorkloadSpec,
        "workload",
        _section(ctx, data, "workload"),
        {
            "kind": lambda v: _choice(
                ctx, "workload", "kind", v, ("synthetic", "file", "sessions", "trace")
            ),
            "api": lambda v: _choice(ctx, "workload", "api", v, ("chat", "completions")),
            "input_tokens": lambda v: _length(ctx, "workload", "input_tokens", v),
            "output_tokens": lambda v: _length(ctx, "workload", "output_tokens", v),
            "ignore_eos": lambda v: _scalar(ctx, "workload", "ignore_eos", v, bool, None),
            "temperature": num("workload", "temperature", allow_zero=True),
            "path": lambda v: _scalar(ctx, "workload", "path", v, str, None),
            "format": lambda v: _choice(
                ctx, "workload", "format", v, ("jsonl", "sharegpt", *TRACE_FORMATS)
            ),
            "time_scale": num("workload", "time_scale"),
            "tokenizer": lambda v: _scalar(ctx, "workload", "tokenizer", v, str, None),
            "turns": lambda v: _length(ctx, "workload", "turns", v),
            "turn_think_time_s": lambda v: _length(
                ctx, "workload", "turn_think_time_s", v, seconds=True
            ),
            "prefix_groups": num("workload", "prefix_groups", int, allow_zero=True),
            "prefix_tokens": num("workload", "prefix_tokens", int, allow_zero=True),
        },
    )
    _check_sessions_and_prefixes(ctx, workload, _section(ctx, data, "workload"), load)
    workload = _check_trace(ctx, workload, _section(ctx, data, "workload"), data.get("load", {}))
    _check_load_keys(ctx, load, _section(ctx, data, "load"))
    if workload.kind in ("file", "trace"):
        if not workload.path:
            raise ctx.error("workload", "path", f"a {workload.kind} workload needs a path")
        p = Path(workload.path)
        if not p.is_absolute():
            p = Path(path).parent / p if path != "<spec>" else p
        if check_files and not p.exists():
            raise ctx.error("workload", "path", f"file not found: {p}")
        workload = WorkloadSpec(
            **{**{f.name: getattr(workload, f.name) for f in fields(workload)}, "path": str(p)}
        )
    slo_tab = _section(ctx, data, "slo")
    slo = _build(
        ctx,
        SLOSpec,
        "slo",
        slo_tab,
        {
            "ttft_p95_s": num("slo", "ttft_p95_s"),
            "tpot_p95_s": num("slo", "tpot_p95_s"),
            "e2e_p95_s": num("slo", "e2e_p95_s"),
            "max_error_rate": num("slo", "max_error_rate", allow_zero=True),
        },
    )
    _check_run_with_load(ctx, run, _section(ctx, data, "run"), load, workload.kind, slo)
    report_tab = _section(ctx, data, "report")
    _check_unknown(ctx, "report", report_tab, {"target_rps", "quality"})
    target_rps = None
    if "target_rps" in report_tab:
        target_rps = num("report", "target_rps")(report_tab["target_rps"])
    quality = None
    if "quality" in report_tab:
        quality = _scalar(ctx, "report", "quality", report_tab["quality"], bool, None)
        if quality and target.kind == "remote":
            raise ctx.error(
                "report",
                "quality",
                "needs a local target: `tokenbooth model eval` measures the builds local "
                "replicas serve, not a remote server's model",
            )
    return SweepSpec(run, target, server, load, workload, slo, target_rps, text, path, quality)


def load_spec(path: Path | str) -> SweepSpec:
    """Read and parse a spec file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec {p}: {exc.strerror}") from exc
    return parse_spec(text, str(p))
