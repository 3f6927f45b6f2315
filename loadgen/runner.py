"""The sweep runner: server configurations x load levels x repeats -> one run directory.

For each server configuration the runner starts (or reconfigures) the target, then runs each
load level as one Locust point: warm-up, a measured window bounded by duration and request
count, ``/metrics`` snapshots before and after on every replica, raw rows and a summary
written at once, so an interrupted sweep resumes where it stopped. Faults (an unreachable
target, a replica that never gets ready or dies mid-point) are recorded as the point's status
and the sweep moves on.

Importing this module imports Locust (gevent monkey-patching): only ``tokenbooth sweep``
imports it.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import gevent
import locust
import numpy as np
import numpy.typing as npt
import psutil
import requests
from locust.env import Environment

from loadgen import scrape
from loadgen.arrivals import (
    ArrivalKind,
    level_seed,
    point_offsets,
    ramp_offsets,
)
from loadgen.calibration import Gate, sweep_gate
from loadgen.coldstart import read_cold_starts
from loadgen.distributed import MasterOptions, check_external_workers
from loadgen.environment import environment_metadata
from loadgen.gcguard import GcGuard
from loadgen.master import locust_master
from loadgen.profile import run_profile
from loadgen.quality import run_quality_eval
from loadgen.results import REQUEST_COLUMNS, Col, Env, Point, PointStatus, RunDir, Wk
from loadgen.saturation import SaturationDetector
from loadgen.search import Bounds, Probe, bracket, judge, next_rate
from loadgen.servers import Adapter, ServerInfo, adapter_for
from loadgen.servers.detect import detect
from loadgen.servers.tokenbooth import TOKENBOOTH
from loadgen.sessions import SessionPlan, build_sessions, sessions_needed
from loadgen.spec import LoadLevel, ServerConfig, SweepSpec
from loadgen.summary import SYNC_WINDOW_S, server_summary, summarize_point, synchronised
from loadgen.targets import LocalReplicas, RemoteTarget, TargetError
from loadgen.timeslices import ScrapeLog, bin_timeslices
from loadgen.traces import TraceReplay, plan_replay, read_trace, trace_prompts
from loadgen.users import (
    Balancer,
    ClosedLoopUser,
    OpenLoopUser,
    PointContext,
    Session,
    new_session,
)
from loadgen.worker import MSG_POINT, point_message
from loadgen.workload import (
    FAKE_ENGINE_WORDS,
    PromptItem,
    TokenCounter,
    TokenizerChoice,
    WordCounter,
    build_workload,
    builtin_tokenizer,
    choose_tokenizer,
    load_tokenizer,
)
from service.errors import TokenboothError

__all__ = ["SweepRunner", "loadgen_cpu_percent"]

logger = logging.getLogger("tokenbooth.loadgen")

_BOTTLENECK_CPU_PERCENT = 90.0


class _SpawnRateFilter(logging.Filter):
    """Locust warns about spawn rates > 100/s; a point starts all its users at once on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "spawn rate is very high" not in record.getMessage()


logging.getLogger("locust.runners").addFilter(_SpawnRateFilter())


@dataclass
class _Target:
    urls: list[str]
    model: str
    counter: TokenCounter
    headers: dict[str, str]
    alive: Callable[[], str | None]


@dataclass(frozen=True)
class _Finish:
    """Which point :meth:`SweepRunner._finish_point` writes, and against which target."""

    key: str
    pid: int
    config: ServerConfig
    level: LoadLevel
    rep: int
    target: _Target


def loadgen_cpu_percent(
    proc: Any, cpu0: Any, wall0: float, worker_cpu: float | None = None
) -> float:
    """CPU % of the load generator since ``cpu0``/``wall0`` (psutil times, monotonic start).

    With distributed workers the busiest process is what limits the offered load, so the
    larger of this process's share and the busiest worker's (``worker_cpu``) is returned.
    """
    cpu1 = proc.cpu_times()
    wall = max(time.monotonic() - wall0, 1e-9)
    cpu_pct = 100.0 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall
    return float(cpu_pct if worker_cpu is None else max(cpu_pct, worker_cpu))


class SweepRunner:
    """Runs a parsed spec into a run directory, resuming where a previous run stopped."""

    def __init__(
        self,
        spec: SweepSpec,
        run_dir: Path,
        *,
        workers: int | None = None,
        master: MasterOptions | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
        quality_program: Sequence[str] | None = None,
        strict: bool = False,
    ) -> None:
        self.spec = spec
        # How the quality hook calls `tokenbooth` (loadgen.quality); None: the installed CLI.
        self._quality_program = quality_program
        self._strict = strict  # the calibration gate refuses instead of warning
        self._gate: Gate | None = None
        self.run = RunDir(run_dir)
        # With external workers (`--master`) `workers` is how many to wait for, not to spawn.
        self.workers = spec.load.workers if workers is None else workers
        self.master_options = master or MasterOptions()
        check_external_workers(spec, self.master_options, self.workers)
        self._check_workers()
        self.progress = progress or (lambda _: None)
        self._state: dict[str, Any] = {}
        self._manifest: dict[str, Any] | None = None
        self._master: Any = None
        self._dist_rows: list[dict[str, Any]] = []
        self._dist_done: dict[str, dict[str, Any]] = {}
        # What serves the target, found once per run (_record_server); scrapes read through it.
        self._server: ServerInfo | None = None
        self._adapter: Adapter = TOKENBOOTH
        # Where the next point starts in the workload (PointContext.next_index), run-wide.
        self._prompt_cursor = 0
        self._probe_session: Session | None = None  # sends closed-loop ramp probes
        # [workload] kind = "sessions": the session plans, built per configuration (its counter).
        self._sessions: list[SessionPlan] | None = None
        # [workload] kind = "trace": the one replay each configuration runs (read up front, so
        # a bad trace fails before any replica starts).
        self._trace: TraceReplay | None = None
        if spec.workload.kind == "trace":
            requests = read_trace(Path(spec.workload.path), spec.workload.format)
            self._trace = plan_replay(requests, spec.workload, spec.run)

    def _check_workers(self) -> None:
        """What distributed mode cannot do, said before any replica starts (``--workers`` may
        override the spec, which rejects the same combinations itself)."""
        if self.workers <= 0:
            return
        load = self.spec.load
        if load.mode == "stages" and load.stages[0].mode == "concurrency":
            raise TokenboothError(
                "concurrency stages run in one process: run them without [load] workers / "
                "--workers, or use rate stages"
            )
        if self.spec.run.saturation_s > 0 and self.spec.open_loop:
            logger.warning(
                "notice: [run] saturation_s = %g is not applied with %d Locust workers (the "
                "workers hold the in-flight counts): open-loop points run their whole window "
                "however the queue grows",
                self.spec.run.saturation_s,
                self.workers,
            )

    # ------------------------------------------------------------------ orchestration
    def execute(self) -> Path:
        """Run every point not yet done; return the run directory."""
        run = self.run.create()
        spec_file = run.path / "spec.toml"
        if spec_file.exists() and spec_file.read_text() != self.spec.text:
            raise TokenboothError(
                f"{run.path} holds a run of a different spec; use another --output to start anew"
            )
        run.write_spec(self.spec.text)
        self._state = run.state()
        resumed = len(self._state.get("done", []))
        if resumed:
            logger.info("resuming run: %d points already done", resumed)
        run.write_environment(environment_metadata(self.spec, None))
        self._calibrate()
        with self._load_generators():
            for config in self.spec.configs():
                self._run_config(config)
        if self._manifest is not None:
            self._update_environment(Env.MODEL_MANIFEST, self._manifest)
        run_quality_eval(self.spec, run, program=self._quality_program)
        return run.path

    def _calibrate(self) -> None:
        """The calibration gate: judge every open-loop point before anything starts."""
        processes = max(self.workers, 1)
        self._gate = sweep_gate(
            self.spec.workload.output_tokens.expected, processes, strict=self._strict
        )
        if self.spec.load.mode in ("concurrency", "rate"):
            for config in self.spec.configs():
                for level in self.spec.levels():
                    for rep in range(self.spec.run.repeats):
                        if level.mode == "rate":
                            self._check_gate(f"{config.config_id}|{level.key}|{rep}", config, level)
        self._update_environment(Env.LOADGEN_CEILING, self._gate.describe())

    def _check_gate(self, key: str, config: ServerConfig, level: LoadLevel) -> None:
        if self._gate is None or self._is_done(key):
            return
        self._gate.check(key, config.config_id, level.mode, level.value, level.requests_per_s)
        self._update_environment(Env.LOADGEN_CEILING, self._gate.describe())

    def _update_environment(self, key: str, value: Any) -> None:
        # Read and rewrite: environment.json keeps what earlier steps of the run recorded.
        env = self.run.environment()
        env[key] = value
        self.run.write_environment(env)

    def _record_tokenizer(self, choice: TokenizerChoice) -> None:
        """Record what measured the workload's prompts in tokens (shown in the report)."""
        logger.info("prompt tokens counted by: %s (%s)", choice.detail, choice.source)
        self._update_environment(Env.TOKENIZER, choice.environment())

    @contextmanager
    def _load_generators(self) -> Iterator[None]:
        """Locust distributed mode: a master here and ``workers`` worker processes (spawned
        here, or external ones it waits for)."""
        if self.workers <= 0:
            yield
            return

        def on_rows(node: str, data: dict[str, Any]) -> None:
            self._dist_rows.extend(data["rows"])

        def on_done(node: str, data: dict[str, Any]) -> None:
            self._dist_done[node] = data

        with locust_master(
            self.master_options, self.workers, self.run.path / "workers.log", on_rows, on_done
        ) as master:
            self._master = master
            try:
                yield
            finally:
                self._master = None

    def _record_server(self, url: str, headers: dict[str, str], *, local: bool) -> None:
        """Find what serves ``url`` (once per run), record it, scrape through its adapter."""
        if self._server is not None:
            return
        if local:
            info = replace(detect(url, headers, kind="tokenbooth"), detected_from="local replicas")
        else:
            info = detect(url, headers, kind=self.spec.target.server)
        self._server, self._adapter = info, adapter_for(info.kind)
        logger.info("server: %s (%s)", info.describe(), info.detected_from)
        if not info.server_view:
            logger.warning(
                "%s exports no server-side metrics the harness reads: points hold the client's "
                "view only",
                url,
            )
        self._update_environment(Env.SERVER, info.environment())

    def _point_id(self, key: str) -> int:
        ids: dict[str, int] = self._state.setdefault("point_ids", {})
        if key not in ids:
            ids[key] = max(ids.values(), default=-1) + 1
        return ids[key]

    def _save_state(self) -> None:
        self.run.write_state(self._state)

    def _is_done(self, key: str) -> bool:
        return key in self._state.get("done", [])

    def _mark_done(self, key: str) -> None:
        done: list[str] = self._state.setdefault("done", [])
        if key not in done:
            done.append(key)
        self._save_state()

    @contextmanager
    def _target(self, config: ServerConfig) -> Iterator[_Target]:
        spec = self.spec
        if spec.target.kind == "remote":
            remote = RemoteTarget(spec.target)
            remote.apply(config)
            headers = remote.headers()
            self._record_server(remote.urls[0], headers, local=False)
            # Read right after the hook: a scaled deployment's new pods have just started.
            self.run.write_cold_start(
                read_cold_starts(remote.urls, config.config_id, headers=headers)
            )
            model = _served_model(remote.urls[0], headers)
            choice = choose_tokenizer(
                spec.workload.tokenizer,
                url=remote.urls[0],
                kind=self._server.kind if self._server is not None else spec.target.server,
                model=model,
                headers=headers,
                builtin=lambda: builtin_tokenizer(spec.target.engine),
                base_dir=Path(spec.path).parent,
            )
            self._record_tokenizer(choice)
            yield _Target(remote.urls, model, choice.counter, headers, lambda: None)
            return
        model_dir: Path | None = None
        if spec.target.engine == "ctranslate2":
            from service.models import read_manifest, resolve_model

            model_dir = resolve_model(spec.target.model, config.quantization)
            manifest = read_manifest(model_dir)
            self._manifest = json.loads(manifest.to_json())
        replicas = LocalReplicas(
            config,
            spec.target,
            model_dir=model_dir,
            log_dir=self.run.path / "replicas",
            extra_env=spec.server.env,
            request_timeout_s=spec.run.request_timeout_s,
        )
        with replicas.running(spec.target.ready_timeout_s) as urls:
            self._record_server(urls[0], {}, local=True)
            self.run.write_cold_start(read_cold_starts(urls, config.config_id))
            model = _served_model(urls[0], {})
            if spec.workload.tokenizer:
                logger.warning(
                    "[workload] tokenizer = %r applies to remote targets only; local replicas' "
                    "prompts are measured with the model they serve",
                    spec.workload.tokenizer,
                )
            if model_dir is not None:
                local = TokenizerChoice(load_tokenizer(model_dir), "builtin", str(model_dir))
            else:
                local = TokenizerChoice(WordCounter(), "builtin", FAKE_ENGINE_WORDS)
            self._record_tokenizer(local)
            yield _Target(urls, model, local.counter, {}, replicas.dead)

    def _run_config(self, config: ServerConfig) -> None:
        levels = [self._trace.level()] if self._trace is not None else self.spec.levels()
        keys = [
            f"{config.config_id}|{lv.key}|{r}"
            for lv in levels
            for r in range(self.spec.run.repeats)
        ]
        if levels and all(self._is_done(k) for k in keys):
            return
        auto_state = self._state.get("auto", {}).get(config.config_id, {})
        if self.spec.load.mode == "auto" and auto_state.get("complete"):
            return  # resumed: this configuration's auto search already finished
        search_state = self._state.get("search", {}).get(config.config_id, {})
        if self.spec.load.mode == "slo_search" and search_state.get("complete"):
            return  # resumed: this configuration's SLO-edge search already finished
        attempts = 0
        while True:
            try:
                with self._target(config) as target:
                    # A trace's prompts are built per point (_run_point), in trace order.
                    items = (
                        []
                        if self._trace is not None
                        else build_workload(
                            self.spec.workload,
                            target.counter,
                            max(64, min(self.spec.run.max_requests, 4096)),
                            seed=self.spec.run.seed,
                        )
                    )
                    if self.spec.workload.kind == "sessions":
                        self._sessions = build_sessions(
                            self.spec.workload,
                            target.counter,
                            sessions_needed(
                                self.spec.workload, max(64, min(self.spec.run.max_requests, 4096))
                            ),
                            seed=self.spec.run.seed,
                        )
                    if self.spec.load.mode == "auto":
                        self._run_auto(config, target, items)
                    elif self.spec.load.mode == "slo_search":
                        self._run_search(config, target, items)
                    elif self.spec.load.mode == "stages":
                        for rep in range(self.spec.run.repeats):
                            died = run_profile(self, config, rep, target, items)
                            if died:
                                raise _ReplicaDied(died)
                    else:
                        for level in levels:
                            for rep in range(self.spec.run.repeats):
                                key = f"{config.config_id}|{level.key}|{rep}"
                                self._check_gate(key, config, level)
                                s = self._run_point(config, level, rep, target, items)
                                if self._gate is not None:
                                    achieved = s.get(Point.ACHIEVED_RPS, math.nan)
                                    self._gate.record(
                                        config.config_id, level.mode, level.value, achieved
                                    )
                return
            except _ReplicaDied as died:
                # Record and continue: the next point gets fresh replicas.
                attempts += 1
                logger.warning("replica died: %s; restarting replicas for the next point", died)
                if attempts > 3:
                    return
            except TargetError as exc:
                logger.error("target failed for %s: %s", config.config_id, exc.detail)
                for level in levels or [LoadLevel("concurrency", 1.0, "closed")]:
                    for rep in range(self.spec.run.repeats):
                        key = f"{config.config_id}|{level.key}|{rep}"
                        if not self._is_done(key):
                            self._record_failed(config, level, rep, key, exc.status, exc.detail)
                return

    def _record_failed(
        self, config: ServerConfig, level: LoadLevel, rep: int, key: str, status: str, detail: str
    ) -> None:
        pid = self._point_id(key)
        self.run.write_requests(pid, [])
        self.run.append_point(
            self._base_row(pid, config, level, rep)
            | {
                Point.STATUS: status,
                Point.STATUS_DETAIL: detail,
                Point.N_REQUESTS: 0,
                Point.N_OK: 0,
                Point.N_ERRORS: 0,
                Point.VALID: False,
                Point.INVALID_REASON: f"{status}: {detail}",
            }
        )
        self._mark_done(key)
        self.progress({"event": "point_failed", "key": key, "status": status, "detail": detail})

    def _base_row(
        self, pid: int, config: ServerConfig, level: LoadLevel, rep: int
    ) -> dict[str, Any]:
        return {
            Point.POINT_ID: pid,
            Point.CONFIG_ID: config.config_id,
            Point.REPEAT: rep,
            Point.REPLICAS: config.replicas,
            Point.MAX_BATCH_SIZE: config.max_batch_size,
            Point.MAX_BATCH_DELAY_MS: config.max_batch_delay_ms,
            Point.BATCH_WORKERS: config.batch_workers,
            Point.SPARE_WORKERS: config.spare_workers,
            Point.INTRA_THREADS: config.intra_threads,
            Point.QUANTIZATION: config.quantization,
            Point.BATCH_POLICY: config.batch_policy,
            Point.LOAD_MODE: level.mode,
            Point.ARRIVAL: level.arrival,
            # Open loop in requests/s, a sessions workload's sessions/s times its mean turns.
            Point.LOAD_LEVEL: level.requests_per_s if level.mode == "rate" else level.value,
            Point.STARTED_AT: time.time(),
            Point.BURSTINESS: self.spec.load.burstiness if level.arrival == "gamma" else math.nan,
            Point.STAGE: math.nan if level.stage is None else level.stage,
        }

    # ------------------------------------------------------------------ auto
    def _run_auto(self, config: ServerConfig, target: _Target, items: list[PromptItem]) -> None:
        """GuideLLM-style: synchronous rate, saturation throughput, rates spread between."""
        auto = self._state.setdefault("auto", {}).setdefault(config.config_id, {})
        sync_level = LoadLevel("concurrency", 1.0, "closed")
        sat_users = max(8, 2 * config.replicas * config.max_batch_size * config.batch_workers)
        sat_level = LoadLevel("concurrency", float(min(sat_users, 256)), "closed")
        # A point that ended without a usable rate (e.g. its replica died) is measured again.
        if not auto.get("sync_rps", math.nan) > 0:
            s = self._run_point(config, sync_level, 0, target, items)
            auto["sync_rps"] = s.get(Point.ACHIEVED_RPS, math.nan)
            self._save_state()
        if not auto.get("max_rps", math.nan) > 0:
            s = self._run_point(config, sat_level, 0, target, items)
            auto["max_rps"] = s.get(Point.ACHIEVED_RPS, math.nan)
            self._save_state()
        lo, hi = auto["sync_rps"], auto["max_rps"]
        if not (lo > 0 and hi > 0) or math.isnan(lo) or math.isnan(hi):
            logger.warning(
                "auto: could not measure the synchronous or saturation rate; no rate points"
            )
            auto["complete"] = True
            self._save_state()
            return
        hi = max(hi, lo * 1.05)
        rates = np.linspace(lo, hi, self.spec.load.auto_points + 2)[1:-1]
        for rate in rates:
            level = LoadLevel("rate", round(float(rate), 4), self.spec.load.arrival)
            s = self._run_point(config, level, 0, target, items)
            achieved = s.get(Point.ACHIEVED_RPS, math.nan)
            # Clearly saturated: the target no longer keeps up with the offered rate.
            if not s.get(Point.VALID, True) or (achieved == achieved and achieved < 0.9 * rate):
                logger.info(
                    "auto: saturated at %.3f req/s (achieved %.3f); stopping early", rate, achieved
                )
                break
        auto["complete"] = True
        self._save_state()

    # ------------------------------------------------------------------ slo_search
    def _run_search(self, config: ServerConfig, target: _Target, items: list[PromptItem]) -> None:
        """Open-loop points at the rates :mod:`loadgen.search` picks, until the SLO edge is
        bracketed; the probes and the bracket go to ``search.json``."""
        state = self._state.setdefault("search", {}).setdefault(config.config_id, {})
        bounds = Bounds.of(self.spec.load)
        probes = [Probe(**p) for p in state.get("probes", [])]
        while (rate := next_rate(probes, bounds)) is not None:
            level = LoadLevel("rate", round(rate, 4), self.spec.load.arrival)
            summary = self._run_point(config, level, 0, target, items)
            if Point.TTFT_P95_S not in summary:  # resumed: the state holds no percentiles
                summary = self._point_row(f"{config.config_id}|{level.key}|0")
            # Label the probe by the load its schedule realised (what the verdict is for).
            run = self.spec.run
            due = np.count_nonzero(self._probe_offsets(level) >= run.warmup_s)
            in_window = min(int(due), run.max_requests) / run.duration_s
            probe = replace(
                judge(
                    summary,
                    self.spec.slo,
                    lag_threshold_s=run.lag_threshold_s,
                    min_samples=run.min_samples,
                    scheduled_rate=in_window,
                ),
                rate=level.value,
            )
            probes.append(probe)
            state["probes"] = [asdict(p) for p in probes]
            self._save_state()
            logger.info(
                "slo_search: %g req/s (%.3g scheduled) %s%s",
                level.value,
                in_window,
                "meets the SLO" if probe.passed else "fails",
                "" if probe.passed else f" ({probe.reason})",
            )
        found = bracket(probes, bounds)
        logger.info("slo_search %s: %s", config.config_id, found.describe())
        search = self.run.search()
        search[config.config_id] = {
            "slo": self.spec.slo.describe(),
            "bounds": asdict(bounds),
            "bracket": found.to_json(),
            "describe": found.describe(),
            "probes": state["probes"],
        }
        self.run.write_search(search)
        state["complete"] = True
        self._save_state()

    def _probe_offsets(self, level: LoadLevel) -> npt.NDArray[np.float64]:
        """An SLO-search probe's send times: the configuration's one seeded rate-1 sequence
        scaled to ``level`` (:func:`loadgen.arrivals.probe_offsets`), the same for every probe,
        with at most ``max_requests`` warm-up sends (:func:`loadgen.arrivals.point_offsets`)."""
        return self._rate_offsets(level, seed=self.spec.run.seed, probe=True)

    def _rate_offsets(
        self, level: LoadLevel, *, seed: int, probe: bool = False
    ) -> npt.NDArray[np.float64]:
        """An open-loop point's send times at ``level`` (:func:`loadgen.arrivals.point_offsets`):
        warm-up then window, the warm-up bounded by ``max_requests`` like the window."""
        run, arrival = self.spec.run, level.arrival
        kind: ArrivalKind = (
            "constant" if arrival == "constant" else ("gamma" if arrival == "gamma" else "poisson")
        )
        return point_offsets(
            kind,
            level.value,
            run.warmup_s,
            run.duration_s,
            max_requests=run.max_requests,
            seed=seed,
            burstiness=self.spec.load.burstiness,
            probe=probe,
        )

    def _point_row(self, key: str) -> dict[str, Any]:
        """A finished point's ``points.csv`` row (empty when it has none)."""
        pts = self.run.points()
        hit = pts[pts[Point.POINT_ID] == self._point_id(key)]
        return {} if hit.empty else dict(hit.iloc[0])

    # ------------------------------------------------------------------ one point
    def _run_point(
        self,
        config: ServerConfig,
        level: LoadLevel,
        rep: int,
        target: _Target,
        items: list[PromptItem],
    ) -> dict[str, Any]:
        key = f"{config.config_id}|{level.key}|{rep}"
        if self._is_done(key):
            # Resumed: what auto mode needs to decide on the next rate, from the first run.
            done: dict[str, Any] = self._state.get("summaries", {}).get(key, {})
            return done
        pid = self._point_id(key)
        run = self.spec.run
        closed = level.mode != "rate"
        if self._trace is not None:
            # Seeded per point: a replay never meets the prefix cache its predecessor filled.
            items = trace_prompts(self._trace.requests, target.counter, seed=run.seed + pid)
        # The window is set once the start ramp is known (a closed-loop probe may come first).
        ctx = PointContext(
            api=self.spec.workload.api,
            model=target.model,
            items=items,
            balancer=Balancer(target.urls, self.spec.target.balance),
            ignore_eos=self.spec.workload.ignore_eos,
            temperature=self.spec.workload.temperature,
            timeout_s=run.request_timeout_s,
            measure_from=math.inf,
            stop_at=math.inf,
            max_requests=run.max_requests,
            headers=target.headers,
            next_index=self._prompt_cursor,
            think_time=self.spec.load.think_time_s if closed else None,
            seed=run.seed + pid,
            sessions=self._sessions,
            turn_think_time=self.spec.workload.turn_think_time_s,
        )
        ramp = self._ramp_s(ctx, int(level.value), key) if closed else math.nan
        t0 = time.time() + 0.2
        # Every user has started before the measured window opens, however long the ramp.
        measure_from = t0 + max(run.warmup_s, ramp if closed else 0.0)
        ctx.measure_from = measure_from
        ctx.stop_at = measure_from + run.duration_s
        if closed:
            ctx.user_starts = [t0 + float(o) for o in ramp_offsets(int(level.value), ramp)]
        elif self._trace is not None:
            # plan_replay bounded the warm-up by max_requests; items follow its requests 1:1.
            ctx.schedule = [t0 + o for o in self._trace.offsets_s]
            ctx.schedule_items = list(range(len(items)))
        elif self.spec.load.mode == "slo_search":
            ctx.schedule = [t0 + float(o) for o in self._probe_offsets(level)]
        else:
            offsets = self._rate_offsets(level, seed=level_seed(run.seed, level.key, rep))
            ctx.schedule = [t0 + float(o) for o in offsets]
        self.progress(
            {
                "event": "point_start",
                "key": key,
                "point_id": pid,
                "level": level.key,
                "config": config.config_id,
            }
        )
        # The server's "before" is taken when the measured window opens, so its deltas cover
        # (nearly) the same requests as the client's rows: warm-up requests still in flight
        # at that instant are the only overlap.
        before: dict[str, scrape.Snapshot] = {}

        def snapshot_before() -> None:
            before.update(
                {
                    u: scrape.snapshot(u, adapter=self._adapter, headers=target.headers)
                    for u in target.urls
                }
            )

        # Loop timers count from the hub's cached clock, which is stale by however long this
        # greenlet just blocked (writing the previous point's files): refresh it, or the
        # snapshot fires that much early and the server window swallows warm-up requests.
        gevent.get_hub().loop.update_now()
        snapper = gevent.spawn_later(max(0.0, measure_from - time.time()), snapshot_before)
        slices = self._scrape_slices(target, measure_from)
        proc = psutil.Process()
        cpu0 = proc.cpu_times()
        wall0 = time.monotonic()
        saturated = ""  # distributed points are not watched: the workers hold the in-flight counts
        if self._master is not None:
            worker_cpu = self._drive_distributed(ctx, level, target)
            self._record_workers(pid)
            # Workers advance their own stretches; move past the longest of them, with room
            # for the warm-up requests that left no row.
            n = max(len(self._master.clients), 1)
            self._prompt_cursor += 2 * (len(ctx.rows) // n + 1) + 64
        else:
            worker_cpu = None
            watch = None
            if level.mode == "rate" and run.saturation_s > 0:
                # A trace's bursts outrun the service by design: only its lag is watched.
                watch = SaturationDetector(
                    level.requests_per_s,
                    run.saturation_s,
                    run.lag_threshold_s,
                    growth=self._trace is None,
                )
            saturated = self._drive(ctx, level, target, watch)
            self._prompt_cursor = ctx.next_index
        cpu_pct = loadgen_cpu_percent(proc, cpu0, wall0, worker_cpu)
        snapper.join(timeout=30)
        if slices is not None:
            slices[1].kill()
        if not before:
            snapshot_before()  # the point ended before its window opened (e.g. target died)
        after = {
            u: scrape.snapshot(u, adapter=self._adapter, headers=target.headers)
            for u in target.urls
        }
        server_rows = [
            row for u in target.urls for row in scrape.deltas(pid, u, before[u], after[u])
        ]
        summary = self._finish_point(
            _Finish(key, pid, config, level, rep, target),
            ctx.rows,
            server_rows,
            window=(measure_from, None),
            cpu_pct=cpu_pct,
            ramp=ramp,
            slices=slices[0] if slices is not None else None,
            saturated=saturated,
        )
        if summary[Point.STATUS] == PointStatus.REPLICA_DIED:
            raise _ReplicaDied(str(summary[Point.STATUS_DETAIL]))
        return summary

    def _finish_point(
        self,
        point: _Finish,
        rows: list[dict[str, Any]],
        server_rows: list[dict[str, Any]],
        *,
        window: tuple[float, float | None],
        cpu_pct: float,
        ramp: float,
        slices: ScrapeLog | None = None,
        saturated: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write one measured point (rows, server deltas, timeslices, summary row), mark it done.

        Sweep points and stage points both end here, so every point gets the same statistics
        (goodput against the spec's SLO included), validity, status and bottleneck verdict.

        Args:
            point: Which point.
            rows: Its measured request rows (their point id is set here).
            server_rows: Its ``/metrics`` deltas.
            window: When its measured window opened and, for a stage, closed; ``None``: the
                window runs from the first send to the last finish of ``rows``.
            cpu_pct: The busiest load-generator process's CPU over the point.
            ramp: The closed-loop start ramp (NaN in open loop).
            slices: The ``[run] timeslice_s`` scrapes covering the window, or ``None``.
            saturated: Why the saturation watch ended the point early, ``""`` when it did not.
            extra: More ``points.csv`` values (a stage's index and levels).

        Returns:
            The summary row as written.
        """
        run, key, pid, level = self.spec.run, point.key, point.pid, point.level
        start, end = window
        for row in rows:
            row[Col.POINT_ID] = pid
        self.run.write_requests(pid, rows)
        self.run.write_server(pid, server_rows)
        if slices is not None:
            self._write_slices(pid, rows, slices, start, end)
        summary = self._base_row(pid, point.config, level, point.rep) | {Point.STARTED_AT: start}
        summary |= summarize_point(
            rows,
            level=level,
            lag_threshold_s=run.lag_threshold_s,
            min_samples=run.min_samples,
            slo=self.spec.slo,
            duration_s=None if end is None else end - start,
        )
        summary |= server_summary(server_rows)
        summary[Point.RAMP_S] = ramp
        summary |= dict(extra or {})
        closed = level.mode != "rate"
        if closed and synchronised(summary[Point.SYNC_SHARE], summary[Point.SYNC_SHARE_POISSON]):
            logger.warning(
                "point %s: closed-loop users stayed synchronised: %.0f%% of sends within %g ms "
                "of another (independent arrivals at this rate: %.1f%%); its latencies describe "
                "users riding the same batches (try [load] think_time_s, or open loop)",
                key,
                100 * summary[Point.SYNC_SHARE],
                SYNC_WINDOW_S * 1000,
                100 * summary[Point.SYNC_SHARE_POISSON],
            )
        summary[Point.LOADGEN_CPU_PERCENT] = cpu_pct
        summary[Point.LOADGEN_BOTTLENECK] = cpu_pct >= _BOTTLENECK_CPU_PERCENT
        dead = point.target.alive()
        summary[Point.STATUS] = PointStatus.REPLICA_DIED if dead else PointStatus.OK
        summary[Point.STATUS_DETAIL] = dead or ""
        if saturated and not dead:
            summary[Point.STATUS] = PointStatus.SATURATED
            summary[Point.STATUS_DETAIL] = saturated
            summary[Point.VALID] = False
            summary[Point.INVALID_REASON] = "; ".join(
                x for x in (summary.get(Point.INVALID_REASON, ""), f"saturated: {saturated}") if x
            )
        if dead:
            summary[Point.VALID] = False
            summary[Point.INVALID_REASON] = "; ".join(
                x for x in (summary.get(Point.INVALID_REASON, ""), f"replica died: {dead}") if x
            )
        if summary[Point.LOADGEN_BOTTLENECK]:
            logger.warning(
                "point %s: load generator used %.0f%% CPU; it may be the bottleneck "
                "(use [load] workers = N for Locust's distributed mode)",
                key,
                cpu_pct,
            )
        self.run.append_point(summary)
        self._state.setdefault("summaries", {})[key] = {
            Point.ACHIEVED_RPS: summary.get(Point.ACHIEVED_RPS, math.nan),
            Point.VALID: bool(summary.get(Point.VALID, False)),
        }
        self._mark_done(key)
        self.progress({"event": "point_done", "key": key, "summary": summary})
        return summary

    def _ramp_s(self, ctx: PointContext, users: int, key: str) -> float:
        """The closed-loop start ramp: the spec's ``ramp_s``, or one probed request's duration.

        The probe is the point's first warm-up request, sent alone to the idle target: one
        request's duration without queueing, a lower bound of the duration under load (set
        ``[load] ramp_s`` for a longer ramp). One user needs no ramp and sends no probe.
        """
        explicit = self.spec.load.ramp_s
        if explicit is not None:
            return explicit
        if users <= 1:
            return 0.0
        if self._probe_session is None:
            self._probe_session = new_session(Environment(events=locust.events), pool_size=4)
        row = ctx.send(self._probe_session, -1, None)
        duration = float(row[Col.E2E_S])
        if row[Col.OK] and math.isfinite(duration) and duration > 0:
            logger.info("point %s: start ramp %.3f s (one probed request)", key, duration)
            return duration
        logger.warning(
            "point %s: the warm-up probe failed (%s): closed-loop users start together, "
            "without a ramp",
            key,
            row[Col.ERROR] or f"HTTP {row[Col.STATUS]}",
        )
        return 0.0

    def _scrape_slices(
        self, target: _Target, measure_from: float
    ) -> tuple[ScrapeLog, gevent.Greenlet] | None:
        """Read every target's ``/metrics`` once per ``[run] timeslice_s``, mid-slice, from
        the window's opening; ``None`` when timeslices are off."""
        interval = self.spec.run.timeslice_s
        if interval <= 0:
            return None
        log = ScrapeLog()

        def loop() -> None:
            k = 0
            while True:
                gevent.sleep(max(0.0, measure_from + (k + 0.5) * interval - time.time()))
                log.fetch(target.urls, target.headers, timeout_s=min(interval, 5.0))
                k += 1

        return log, gevent.spawn(loop)

    def _write_slices(
        self,
        pid: int,
        rows: list[dict[str, Any]],
        log: ScrapeLog,
        measure_from: float,
        end: float | None = None,
    ) -> None:
        """Bin one point's rows and scrapes into timeslices from ``measure_from`` to ``end``
        (``None``: the last finish of its rows)."""
        import pandas as pd

        frame = pd.DataFrame(rows, columns=list(REQUEST_COLUMNS))
        if end is None:
            ends = pd.to_numeric(frame[Col.FINISHED_AT], errors="coerce")
            end = float(ends.max()) if ends.notna().any() else time.time()
        slices = bin_timeslices(
            pid,
            frame,
            log.gauges(self._adapter),
            start=measure_from,
            end=end,
            interval_s=self.spec.run.timeslice_s,
        )
        self.run.write_timeslices(pid, slices.to_dict("records"))

    def _drive(
        self,
        ctx: PointContext,
        level: LoadLevel,
        target: _Target,
        watch: SaturationDetector | None = None,
    ) -> str:
        """Run Locust for one point until its window closes and in-flight requests finish.

        Returns:
            Why ``watch`` ended the point early as saturated, ``""`` when it did not.
        """
        user_class = OpenLoopUser if level.mode == "rate" else ClosedLoopUser
        env = Environment(user_classes=[user_class], events=locust.events)
        env.tokenbooth = ctx  # type: ignore[attr-defined]
        runner = env.create_local_runner()
        users = 1 if level.mode == "rate" else int(level.value)
        with GcGuard() as guard:
            runner.start(users, spawn_rate=max(users, 1) * 100.0, wait=False)
            hard_stop = ctx.stop_at + ctx.timeout_s + 5.0
            last_progress = last_watch = 0.0
            saturated = ""
            while time.time() < hard_stop:
                gevent.sleep(0.05)
                guard.tick()
                if target.alive() is not None:
                    ctx.stopped = True
                    break
                now = time.time()
                watching = watch is not None and not ctx.stopped
                if watching and ctx.measure_from <= now < ctx.stop_at and now - last_watch >= 0.25:
                    last_watch = now  # a few samples a second are plenty for a trend
                    assert watch is not None
                    saturated = self._watch(ctx, watch, level, now)
                if ctx.stopped or time.time() >= ctx.stop_at:
                    ctx.stopped = True
                    if ctx.in_flight == 0:
                        break
                now = time.time()
                if now - last_progress >= 0.5:
                    last_progress = now
                    self.progress(
                        {"event": "point_progress", "rows": ctx.rows, "in_flight": ctx.in_flight}
                    )
            runner.quit()
            runner.greenlet.join(timeout=10)
        return saturated

    @staticmethod
    def _watch(ctx: PointContext, watch: SaturationDetector, level: LoadLevel, now: float) -> str:
        """Feed the detector one sample; stop the point's sends when it says saturated."""
        schedule = ctx.schedule or []
        due = bisect.bisect_right(schedule, now) - bisect.bisect_left(schedule, ctx.measure_from)
        # The schedule holds arrivals (session starts with sessions): count sends alike.
        started = ctx.sessions_started if ctx.sessions else ctx.sent_measured
        behind_s = max(0, due - started) / level.value
        reason = watch.observe(now, ctx.in_flight, behind_s, ctx.sent_measured) or ""
        if reason:
            ctx.stopped = True
            logger.warning("point %s saturated, ended early: %s", level.key, reason)
        return reason

    def _record_workers(self, pid: int) -> None:
        """Each worker's rows, CPU and host for point ``pid`` (``workers.csv``)."""
        self.run.write_workers(
            pid,
            [
                {
                    Wk.WORKER: d.get("worker", -1),
                    Wk.NODE_ID: node,
                    Wk.HOST: d.get("host", ""),
                    Wk.ROWS: d["rows"],
                    Wk.CPU_PERCENT: d["cpu_percent"],
                }
                for node, d in self._dist_done.items()
            ],
        )

    def _drive_distributed(self, ctx: PointContext, level: LoadLevel, target: _Target) -> float:
        """One point on Locust workers; returns the busiest worker's CPU percent."""
        master = self._master
        self._dist_rows = []
        self._dist_done = {}
        clients = sorted(master.clients.keys())
        n = len(clients)
        base = point_message(ctx, target.urls, self.spec.target.balance)
        for k, client_id in enumerate(clients):
            data = dict(base)
            data["max_requests"] = _share(ctx.max_requests, k, n)
            # The ramp probe was warm-up too: the workers' warm-up budgets add up to the rest.
            data["sent_warmup"] = _share(ctx.sent_warmup, k, n)
            # Each worker on its own stretch of the workload: no prompt sent twice at once.
            # With sessions the index counts sessions (PointContext.next_session), not items.
            stretch = len(ctx.sessions) if ctx.sessions else len(ctx.items)
            data["next_index"] = ctx.next_index + k * (stretch // n)
            if ctx.schedule is not None:
                data["schedule"] = ctx.schedule[k::n]
            if ctx.schedule_items is not None:
                data["schedule_items"] = ctx.schedule_items[k::n]
            if ctx.user_starts is not None:
                # Interleaved, so each worker's users span the whole ramp.
                data["user_starts"] = ctx.user_starts[k::n]
            data["worker"] = k
            master.send_message(MSG_POINT, data, client_id=client_id)
        gevent.sleep(0.2)  # workers set up their context before users spawn
        user_class = OpenLoopUser if level.mode == "rate" else ClosedLoopUser
        users = n if level.mode == "rate" else int(level.value)
        master.start(users, spawn_rate=max(users, 1) * 100.0, user_classes=[user_class])
        hard_stop = ctx.stop_at + ctx.timeout_s + 10.0
        while len(self._dist_done) < n and time.time() < hard_stop:
            gevent.sleep(0.1)
            if target.alive() is not None:
                break
            self.progress({"event": "point_progress", "rows": self._dist_rows, "in_flight": 0})
        master.stop()
        ctx.rows = list(self._dist_rows)
        missing = n - len(self._dist_done)
        if missing:
            logger.warning("%d Locust worker(s) did not report the end of the point", missing)
        return max((float(d["cpu_percent"]) for d in self._dist_done.values()), default=0.0)


class _ReplicaDied(Exception):
    pass


def _share(total: int, k: int, n: int) -> int:
    """Worker ``k`` of ``n``'s part of ``total``: the parts differ by at most one, sum to it."""
    return total // n + (1 if k < total % n else 0)


def _served_model(url: str, headers: dict[str, str]) -> str:
    try:
        r = requests.get(url + "/v1/models", timeout=10, headers=headers)
        r.raise_for_status()
        return str(r.json()["data"][0]["id"])
    except (requests.RequestException, KeyError, IndexError, ValueError) as exc:
        raise TargetError(PointStatus.TARGET_UNREACHABLE, f"{url}/v1/models: {exc}") from exc
