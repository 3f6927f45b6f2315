"""Result row schema and run-directory layout: the ONE source of result column names.

A run directory holds everything a report needs, and nothing a report must ask a live
service for::

    RUN_DIR/
      spec.toml              the sweep spec as given
      environment.json       machine, GPU, package versions, git revision, model manifest
      points.csv             one row per sweep point (POINT_COLUMNS)
      requests/NNNN.parquet  raw per-request rows of point NNNN (REQUEST_COLUMNS)
      server/NNNN.parquet    server /metrics deltas of point NNNN, per replica (SERVER_COLUMNS)
      timeslices.parquet     client and server figures per interval of a point (TIMESLICE_COLUMNS)
      search.json            [load] mode = "slo_search": the probes and bracket per configuration
      cold_start.csv         each replica's cold start by phase, per configuration (Cs)
      quality/quality.json   what each swept quantization costs in quality ([report] quality)
      quality/eval.log       the output of the `tokenbooth model eval` that wrote it
      state.json             completed point ids, for resume
      sweep.log              the harness's log
      workers.csv            Locust distributed mode: each worker's rows and CPU per point (Wk)

Columns are declared once here with their dtypes; writers and readers (``reports``) use these
constants, never string literals.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLD_START_COLUMNS",
    "COLD_START_FILE",
    "ENVIRONMENT_FILE",
    "ENVIRONMENT_KEYS",
    "LOG_FILE",
    "POINTS_FILE",
    "POINT_COLUMNS",
    "QUALITY_DIR",
    "QUALITY_LOG_FILE",
    "REQUESTS_DIR",
    "REQUEST_COLUMNS",
    "SEARCH_FILE",
    "SERVER_COLUMNS",
    "SERVER_DIR",
    "SPEC_FILE",
    "STATE_FILE",
    "TIMESLICES_FILE",
    "TIMESLICE_COLUMNS",
    "WORKERS_FILE",
    "WORKER_COLUMNS",
    "Col",
    "ColdStartStatus",
    "Cs",
    "Env",
    "Gpu",
    "Machine",
    "Point",
    "PointStatus",
    "RunDir",
    "Server",
    "Srv",
    "Tokenizer",
    "TokensSource",
    "Ts",
    "Wk",
]

SPEC_FILE: Final = "spec.toml"
ENVIRONMENT_FILE: Final = "environment.json"
POINTS_FILE: Final = "points.csv"
REQUESTS_DIR: Final = "requests"
SERVER_DIR: Final = "server"
STATE_FILE: Final = "state.json"
LOG_FILE: Final = "sweep.log"
TIMESLICES_FILE: Final = "timeslices.parquet"
SEARCH_FILE: Final = "search.json"
COLD_START_FILE: Final = "cold_start.csv"
WORKERS_FILE: Final = "workers.csv"
QUALITY_DIR: Final = "quality"
"""Where ``tokenbooth model eval`` writes the run's ``quality.json`` (service.models.quality)."""
QUALITY_LOG_FILE: Final = "eval.log"
"""The eval's own output, inside :data:`QUALITY_DIR`."""


class Col:
    """Per-request columns (``requests/*.parquet``). Times are seconds; epochs are Unix seconds."""

    POINT_ID: Final = "point_id"
    REQUEST_ID: Final = "request_id"
    TRACE_ID: Final = "trace_id"
    TARGET: Final = "target"  # replica base URL that served it
    USER: Final = "user"  # locust user index (closed loop) or -1 (open loop)
    SCHEDULED_AT: Final = "scheduled_at"  # epoch; open loop only, else NaN
    SENT_AT: Final = "sent_at"  # epoch of the actual send (the repeat, when RETRIES is 1)
    FIRST_TOKEN_AT: Final = "first_token_at"  # epoch; NaN if none
    FINISHED_AT: Final = "finished_at"  # epoch
    SCHEDULE_LAG_S: Final = "schedule_lag_s"  # sent_at - scheduled_at (0 in closed loop)
    TTFT_S: Final = "ttft_s"  # first generated token: content, reasoning or tool call - sent_at
    TTFT_CONTENT_S: Final = "ttft_content_s"  # first content token - sent_at (NaN: none)
    TTFT_FROM_SCHEDULE_S: Final = "ttft_from_schedule_s"  # coordinated-omission corrected
    E2E_S: Final = "e2e_s"  # finished_at - sent_at
    E2E_FROM_SCHEDULE_S: Final = "e2e_from_schedule_s"
    TPOT_S: Final = "tpot_s"  # (e2e - ttft) / (output tokens - 1)
    ITL_S: Final = "itl_s"  # list of every inter-token gap
    PROMPT_TOKENS: Final = "prompt_tokens"  # see TOKENS_SOURCE
    COMPLETION_TOKENS: Final = "completion_tokens"  # see TOKENS_SOURCE
    TOKENS_SOURCE: Final = "tokens_source"  # a TokensSource value: where the two counts came from
    STREAMED_CHUNKS: Final = "streamed_chunks"  # chunks with generated tokens (any kind, as TTFT)
    USAGE_MISMATCH: Final = "usage_mismatch"  # usage disagrees with the streamed chunks
    STATUS: Final = "status"  # HTTP status, 0 when no response
    OK: Final = "ok"
    ERROR: Final = "error"  # error text, "" when ok
    FINISH_REASON: Final = "finish_reason"
    # Sends repeated on a fresh connection (a pooled keep-alive one the server had closed): 0 or
    # 1, never an error; latency columns time the repeat, the failed send is open-loop lag.
    RETRIES: Final = "retries"
    # Multi-turn sessions ([workload] kind = "sessions", loadgen.sessions): the session's id
    # (unique within the run) and the 1-based turn; -1 and 0 for requests outside a session.
    SESSION: Final = "session"
    TURN: Final = "turn"


REQUEST_COLUMNS: Final[dict[str, str]] = {
    Col.POINT_ID: "int64",
    Col.REQUEST_ID: "string",
    Col.TRACE_ID: "string",
    Col.TARGET: "string",
    Col.USER: "int64",
    Col.SCHEDULED_AT: "float64",
    Col.SENT_AT: "float64",
    Col.FIRST_TOKEN_AT: "float64",
    Col.FINISHED_AT: "float64",
    Col.SCHEDULE_LAG_S: "float64",
    Col.TTFT_S: "float64",
    Col.TTFT_CONTENT_S: "float64",
    Col.TTFT_FROM_SCHEDULE_S: "float64",
    Col.E2E_S: "float64",
    Col.E2E_FROM_SCHEDULE_S: "float64",
    Col.TPOT_S: "float64",
    Col.ITL_S: "list<float64>",
    Col.PROMPT_TOKENS: "int64",
    Col.COMPLETION_TOKENS: "int64",
    Col.TOKENS_SOURCE: "string",
    Col.STREAMED_CHUNKS: "int64",
    Col.USAGE_MISMATCH: "bool",
    Col.STATUS: "int64",
    Col.OK: "bool",
    Col.ERROR: "string",
    Col.FINISH_REASON: "string",
    Col.RETRIES: "int64",
    Col.SESSION: "int64",
    Col.TURN: "int64",
}


class Point:
    """Per-point summary columns (``points.csv``)."""

    POINT_ID: Final = "point_id"
    CONFIG_ID: Final = "config_id"  # server configuration (replicas x batch settings x quant)
    REPEAT: Final = "repeat"
    REPLICAS: Final = "replicas"
    MAX_BATCH_SIZE: Final = "max_batch_size"
    MAX_BATCH_DELAY_MS: Final = "max_batch_delay_ms"
    BATCH_WORKERS: Final = "batch_workers"
    SPARE_WORKERS: Final = "spare_workers"  # service.formation.worker_available
    INTRA_THREADS: Final = "intra_threads"
    QUANTIZATION: Final = "quantization"
    BATCH_POLICY: Final = "batch_policy"  # service.settings.BATCH_POLICIES
    LOAD_MODE: Final = "load_mode"  # "concurrency" | "rate"
    ARRIVAL: Final = "arrival"  # "closed" | "constant" | "poisson"
    LOAD_LEVEL: Final = "load_level"  # concurrency, or offered requests/s
    STATUS: Final = "status"  # a PointStatus value
    STATUS_DETAIL: Final = "status_detail"
    STARTED_AT: Final = "started_at"
    DURATION_S: Final = "duration_s"  # measured window (warm-up excluded)
    N_REQUESTS: Final = "n_requests"
    N_OK: Final = "n_ok"
    N_ERRORS: Final = "n_errors"
    ERROR_RATE: Final = "error_rate"
    OFFERED_RPS: Final = "offered_rps"  # NaN for closed loop
    # Open-loop sessions: the sessions started per second; OFFERED_RPS and LOAD_LEVEL are this
    # times the mean turns per session, in requests/s like every other rate. NaN otherwise.
    OFFERED_SESSIONS_PER_S: Final = "offered_sessions_per_s"
    ACHIEVED_RPS: Final = "achieved_rps"  # completed ok requests / duration
    OUTPUT_TOKENS_PER_S: Final = "output_tokens_per_s"
    INPUT_TOKENS_PER_S: Final = "input_tokens_per_s"
    TTFT_P50_S: Final = "ttft_p50_s"
    TTFT_P90_S: Final = "ttft_p90_s"
    TTFT_P95_S: Final = "ttft_p95_s"
    TTFT_P99_S: Final = "ttft_p99_s"
    TTFT_SCHED_P95_S: Final = "ttft_sched_p95_s"
    TTFT_CONTENT_P95_S: Final = "ttft_content_p95_s"  # first content token (reasoning models)
    ITL_P50_S: Final = "itl_p50_s"
    ITL_P95_S: Final = "itl_p95_s"
    ITL_P99_S: Final = "itl_p99_s"
    TPOT_P50_S: Final = "tpot_p50_s"
    TPOT_P95_S: Final = "tpot_p95_s"
    E2E_P50_S: Final = "e2e_p50_s"
    E2E_P95_S: Final = "e2e_p95_s"
    E2E_P99_S: Final = "e2e_p99_s"
    E2E_SCHED_P95_S: Final = "e2e_sched_p95_s"
    LAG_P95_S: Final = "lag_p95_s"
    LAG_MAX_S: Final = "lag_max_s"
    PER_USER_TOKENS_PER_S: Final = "per_user_tokens_per_s"  # median of output tokens / e2e
    VALID: Final = "valid"
    INVALID_REASON: Final = "invalid_reason"  # "" when valid
    LOADGEN_CPU_PERCENT: Final = "loadgen_cpu_percent"
    LOADGEN_BOTTLENECK: Final = "loadgen_bottleneck"
    SERVER_TTFT_MEAN_S: Final = "server_ttft_mean_s"
    SERVER_QUEUE_WAIT_MEAN_S: Final = "server_queue_wait_mean_s"
    SERVER_BATCH_FORMATION_MEAN_S: Final = "server_batch_formation_mean_s"
    SERVER_PREFILL_MEAN_S: Final = "server_prefill_mean_s"
    SERVER_DECODE_MEAN_S: Final = "server_decode_mean_s"
    SERVER_BATCH_SIZE_MEAN: Final = "server_batch_size_mean"
    SERVER_BATCH_FILL_MEAN: Final = "server_batch_fill_mean"
    SERVER_REQUESTS: Final = "server_requests"
    SERVER_GENERATION_TOKENS: Final = "server_generation_tokens"
    SERVER_PROMPT_TOKENS: Final = "server_prompt_tokens"
    SERVER_E2E_MEAN_S: Final = "server_e2e_mean_s"
    SERVER_KV_CACHE_USAGE_MAX: Final = "server_kv_cache_usage_max"  # 0..1, of the scrapes seen
    SERVER_PREEMPTIONS: Final = "server_preemptions"
    # Share of ok rows with usage whose completion_tokens differ from the streamed chunks;
    # NaN when no ok row carried usage (nothing to compare).
    USAGE_MISMATCH_RATE: Final = "usage_mismatch_rate"
    RETRIES: Final = "retries"  # sends repeated on a fresh connection, whole point
    # Closed loop: the first sends' spread (loadgen.arrivals.ramp_offsets), seconds; NaN open
    # loop. Synchrony of the measured sends (loadgen.summary.synchrony): share of sends within
    # 2 ms of another, what Poisson sends at the same rate would give, and their ratio.
    RAMP_S: Final = "ramp_s"
    SYNC_SHARE: Final = "sync_share"
    SYNC_SHARE_POISSON: Final = "sync_share_poisson"
    SYNC_RATIO: Final = "sync_ratio"
    # Gamma arrivals' shape ([load] burstiness); NaN for other arrivals.
    BURSTINESS: Final = "burstiness"
    # A stage of a [load] stages profile (loadgen.stages): its index (NaN outside a profile), and
    # its level (users, or offered requests/s) at its start and end; LOAD_LEVEL is the mean, so a
    # ramp from 1 to 8 req/s plots at 4.5 with STAGE_LEVEL_FROM 1 and STAGE_LEVEL_TO 8.
    STAGE: Final = "stage"
    STAGE_LEVEL_FROM: Final = "stage_level_from"
    STAGE_LEVEL_TO: Final = "stage_level_to"
    # Closed-loop stages: the most users Locust ran in the stage's window (NaN in open loop).
    STAGE_USERS_MAX: Final = "stage_users_max"
    # Requests/s that met every per-request [slo] latency term (ttft, tpot, e2e limits applied
    # to each request) and succeeded, over the measured window: vLLM's per-request --goodput
    # (latencies from the actual send; see loadgen.summary.goodput).
    GOODPUT_RPS: Final = "goodput_rps"


class TokensSource:
    """Values of :attr:`Col.TOKENS_SOURCE`: where a row's token counts came from."""

    USAGE: Final = "usage"  # the server's own usage object
    # No usage sent: completion = the streamed token chunks, prompt = the workload's own count.
    CHUNKS: Final = "chunks"
    NONE: Final = ""  # the request failed before any count (no usage, no token chunk)


class PointStatus:
    """Values of :attr:`Point.STATUS`: whether the point ran, and if not, what stopped it."""

    OK: Final = "ok"
    TARGET_UNREACHABLE: Final = "target_unreachable"  # nothing answered at the target's URL
    REPLICA_NOT_READY: Final = "replica_not_ready"  # it answered, never ready in time
    REPLICA_DIED: Final = "replica_died"  # a local replica process exited
    HOOK_FAILED: Final = "hook_failed"  # a remote target's scale hook failed or timed out
    # Open loop: in-flight requests (or the send backlog) grew for [run] saturation_s, so the
    # point was ended early; its rows are kept, the point is invalid.
    SATURATED: Final = "saturated"


POINT_COLUMNS: Final[tuple[str, ...]] = tuple(
    v for k, v in vars(Point).items() if k.isupper() and isinstance(v, str)
)


class Srv:
    """Server metric delta columns (``server/*.parquet``), long format, one row per sample."""

    POINT_ID: Final = "point_id"
    REPLICA: Final = "replica"  # base URL
    METRIC: Final = "metric"  # canonical sample name, e.g. tokenbooth_batch_size_bucket
    SOURCE: Final = "source"  # the server's own sample name, e.g. vllm:prompt_tokens_total
    LE: Final = "le"  # histogram bucket bound, "" for non-bucket samples
    LABELS: Final = "labels"  # other labels as k=v;k=v
    BEFORE: Final = "before"
    AFTER: Final = "after"
    DELTA: Final = "delta"


SERVER_COLUMNS: Final[tuple[str, ...]] = tuple(
    v for k, v in vars(Srv).items() if k.isupper() and isinstance(v, str)
)


class Ts:
    """Timeslice columns (``timeslices.parquet``): one row per point and fixed interval.

    Client figures bin the point's measured rows by when each request finished (throughput) or
    saw its first token (TTFT); server figures are the ``/metrics`` gauges scraped in the slice,
    summed over replicas and averaged over the slice's scrapes (NaN when none was read).
    """

    POINT_ID: Final = "point_id"
    SLICE: Final = "slice"  # 0, 1, ... from the start of the measured window
    START_S: Final = "start_s"  # slice start, seconds after the measured window opened
    DURATION_S: Final = "duration_s"  # [run] timeslice_s (the last slice may be shorter)
    REQUESTS_PER_S: Final = "requests_per_s"  # successful requests finished in the slice
    OUTPUT_TOKENS_PER_S: Final = "output_tokens_per_s"
    ERRORS: Final = "errors"  # failed requests finished in the slice
    TTFT_P50_S: Final = "ttft_p50_s"  # requests whose first token came in the slice
    TTFT_P95_S: Final = "ttft_p95_s"
    IN_FLIGHT: Final = "in_flight"  # measured requests sent and not finished at the slice end
    QUEUE_DEPTH: Final = "queue_depth"  # server: requests waiting (canonical gauge)
    RUNNING: Final = "running"  # server: requests running (canonical gauge)
    SCRAPES: Final = "scrapes"  # /metrics reads that fell in the slice (all replicas)


TIMESLICE_COLUMNS: Final[dict[str, str]] = {
    Ts.POINT_ID: "int64",
    Ts.SLICE: "int64",
    Ts.START_S: "float64",
    Ts.DURATION_S: "float64",
    Ts.REQUESTS_PER_S: "float64",
    Ts.OUTPUT_TOKENS_PER_S: "float64",
    Ts.ERRORS: "int64",
    Ts.TTFT_P50_S: "float64",
    Ts.TTFT_P95_S: "float64",
    Ts.IN_FLIGHT: "int64",
    Ts.QUEUE_DEPTH: "float64",
    Ts.RUNNING: "float64",
    Ts.SCRAPES: "int64",
}


class ColdStartStatus:
    """Values of :attr:`Cs.STATUS`: whether a replica's cold start could be read."""

    MEASURED: Final = "measured"  # read from tokenbooth_startup_duration_seconds on /metrics
    NOT_EXPORTED: Final = "not_exported"  # /metrics answered without the startup phases
    UNREACHABLE: Final = "unreachable"  # /metrics did not answer (or was not Prometheus text)


class Cs:
    """Cold-start columns (``cold_start.csv``): one row per configuration and replica URL.

    Read once per configuration, as soon as its replicas are ready. Behind a load balancer a
    remote URL names whichever pod answered the scrape, not every replica.
    """

    CONFIG_ID: Final = "config_id"
    REPLICA: Final = "replica"  # base URL
    STATUS: Final = "status"  # a ColdStartStatus value
    DETAIL: Final = "detail"  # why not measured, "" when measured
    # Seconds per phase (telemetry.names.STARTUP_PHASES); NaN unless measured.
    INIT_S: Final = "init_s"  # process start to the model load beginning
    LOAD_S: Final = "load_s"  # model build/load
    WARMUP_S: Final = "warmup_s"  # loaded to ready (warm-up generation, batcher start)
    TOTAL_S: Final = "total_s"  # process start to ready


COLD_START_COLUMNS: Final[dict[str, str]] = {
    Cs.CONFIG_ID: "string",
    Cs.REPLICA: "string",
    Cs.STATUS: "string",
    Cs.DETAIL: "string",
    Cs.INIT_S: "float64",
    Cs.LOAD_S: "float64",
    Cs.WARMUP_S: "float64",
    Cs.TOTAL_S: "float64",
}


class Wk:
    """Per-worker, per-point columns (``workers.csv``): who sent a point's rows, at what CPU."""

    POINT_ID: Final = "point_id"
    WORKER: Final = "worker"  # the worker's index in the point (PointContext.worker)
    NODE_ID: Final = "node_id"  # Locust's client id of the worker
    HOST: Final = "host"  # hostname the worker ran on
    ROWS: Final = "rows"  # request rows it sent back
    CPU_PERCENT: Final = "cpu_percent"  # its own process's CPU over the point (100 = one core)


WORKER_COLUMNS: Final[dict[str, str]] = {
    Wk.POINT_ID: "int64",
    Wk.WORKER: "int64",
    Wk.NODE_ID: "string",
    Wk.HOST: "string",
    Wk.ROWS: "int64",
    Wk.CPU_PERCENT: "float64",
}


# ---------------------------------------------------------------------------- run directory


class Env:
    """Keys of ``environment.json``: top level, then the keys inside ``machine`` and ``gpu``."""

    SERVER: Final = "server"  # {kind, version, detected_from, server_view}: what was measured
    TOKENIZER: Final = "tokenizer"  # {source, detail, warning}: what measured prompts in tokens

    TOKENBOOTH_VERSION: Final = "tokenbooth_version"  # str
    STARTED_AT: Final = "started_at"  # ISO 8601 UTC
    MACHINE: Final = "machine"  # {hostname, platform, python, cpu_model, cpu_count, memory_bytes}
    GPU: Final = "gpu"  # {available, detail, devices: [{index, name, memory_total_bytes}]}
    PACKAGES: Final = "packages"  # {name: version}
    GIT_REVISION: Final = "git_revision"  # str | None
    MODEL_MANIFEST: Final = "model_manifest"  # served model's manifest, or None (remote/fake)
    SPEC_PATH: Final = "spec_path"  # str
    # {safety, processes, strict, ceiling, ceiling_rps, chunks, points: {key: verdict}}
    LOADGEN_CEILING: Final = "loadgen_ceiling"  # the calibration gate (loadgen.calibration)


class Machine:
    """Keys of ``environment.json``'s ``machine``."""

    HOSTNAME: Final = "hostname"
    PLATFORM: Final = "platform"
    PYTHON: Final = "python"
    CPU_MODEL: Final = "cpu_model"
    CPU_COUNT: Final = "cpu_count"
    MEMORY_BYTES: Final = "memory_bytes"


class Server:
    """Keys of ``environment.json``'s ``server``."""

    KIND: Final = "kind"  # a loadgen.servers.kinds.ServerKind
    VERSION: Final = "version"  # "" when the server does not say
    DETECTED_FROM: Final = "detected_from"  # what gave the kind away, or "spec"
    SERVER_VIEW: Final = "server_view"  # bool: whether server-side metrics were available


class Tokenizer:
    """Keys of ``environment.json``'s ``tokenizer``: how the workload counted prompt tokens."""

    SOURCE: Final = "source"  # "server" (its tokenize endpoint), "file" or "builtin"
    DETAIL: Final = "detail"  # the endpoint, the tokenizer.json, or the built-in model
    WARNING: Final = "warning"  # why the default fell back to the built-in one; "" if it did not


class Gpu:
    """Keys of ``environment.json``'s ``gpu`` and of each of its ``devices``."""

    AVAILABLE: Final = "available"
    DETAIL: Final = "detail"
    DEVICES: Final = "devices"
    INDEX: Final = "index"
    NAME: Final = "name"
    MEMORY_TOTAL_BYTES: Final = "memory_total_bytes"


ENVIRONMENT_KEYS: Final[tuple[str, ...]] = tuple(
    v for k, v in vars(Env).items() if k.isupper() and isinstance(v, str)
)
"""Top-level keys of ``environment.json``."""


def _arrow_type(dtype: str) -> Any:
    import pyarrow as pa

    return {
        "int64": pa.int64(),
        "float64": pa.float64(),
        "string": pa.string(),
        "bool": pa.bool_(),
        "list<float64>": pa.list_(pa.float64()),
    }[dtype]


class RunDir:
    """Reads and writes one run directory; every file name and column comes from this module."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ writing
    def create(self) -> RunDir:
        """Create the directory tree (idempotent)."""
        (self.path / REQUESTS_DIR).mkdir(parents=True, exist_ok=True)
        (self.path / SERVER_DIR).mkdir(parents=True, exist_ok=True)
        return self

    def write_spec(self, text: str) -> None:
        """Store the spec exactly as given."""
        _atomic_write(self.path / SPEC_FILE, text)

    def write_environment(self, env: Mapping[str, Any]) -> None:
        """Store environment metadata (keys: :data:`ENVIRONMENT_KEYS`)."""
        _atomic_write(self.path / ENVIRONMENT_FILE, json.dumps(env, indent=2, default=str))

    def write_requests(self, point_id: int, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Write one point's raw request rows with the declared schema."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = list(rows)
        schema = pa.schema([(c, _arrow_type(t)) for c, t in REQUEST_COLUMNS.items()])
        columns = {c: [r.get(c) for r in rows] for c in REQUEST_COLUMNS}
        table = pa.Table.from_pydict(columns, schema=schema)
        path = self.path / REQUESTS_DIR / f"{point_id:04d}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    def write_server(self, point_id: int, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Write one point's server metric deltas."""
        import pandas as pd

        frame = pd.DataFrame(list(rows), columns=list(SERVER_COLUMNS))
        path = self.path / SERVER_DIR / f"{point_id:04d}.parquet"
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path

    def append_point(self, summary: Mapping[str, Any]) -> None:
        """Add or replace one point's summary row in ``points.csv``."""
        import pandas as pd

        row = {c: summary.get(c, math.nan) for c in POINT_COLUMNS}
        path = self.path / POINTS_FILE
        frame = pd.DataFrame([row], columns=list(POINT_COLUMNS))
        if path.exists():
            old = pd.read_csv(path)
            old = old[old[Point.POINT_ID] != row[Point.POINT_ID]]
            frame = pd.concat([old, frame], ignore_index=True) if len(old) else frame
        frame = frame.sort_values([Point.POINT_ID, Point.REPEAT], kind="stable")
        tmp = path.with_suffix(".tmp")
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)

    def write_timeslices(self, point_id: int, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add or replace one point's timeslices in ``timeslices.parquet``."""
        import pandas as pd

        frame = pd.DataFrame(list(rows), columns=list(TIMESLICE_COLUMNS))
        old = self.timeslices()
        old = old[old[Ts.POINT_ID] != point_id]
        if len(old):
            frame = pd.concat([old, frame], ignore_index=True) if len(frame) else old
        frame = frame.astype(TIMESLICE_COLUMNS).sort_values([Ts.POINT_ID, Ts.SLICE])
        path = self.path / TIMESLICES_FILE
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)

    def write_workers(self, point_id: int, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add or replace one point's per-worker rows in ``workers.csv`` (keys: :class:`Wk`)."""
        import pandas as pd

        frame = pd.DataFrame([{c: r.get(c) for c in WORKER_COLUMNS} for r in rows])
        frame = frame.reindex(columns=list(WORKER_COLUMNS))
        frame[Wk.POINT_ID] = point_id
        old = self.workers()
        old = old[old[Wk.POINT_ID] != point_id]
        if len(old):
            frame = pd.concat([old, frame], ignore_index=True) if len(frame) else old
        frame = frame.sort_values([Wk.POINT_ID, Wk.WORKER], kind="stable")
        path = self.path / WORKERS_FILE
        tmp = path.with_suffix(".tmp")
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)

    def write_cold_start(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add or replace rows of ``cold_start.csv``, keyed by configuration and replica."""
        import pandas as pd

        frame = pd.DataFrame([{c: r.get(c) for c in COLD_START_COLUMNS} for r in rows])
        frame = frame.reindex(columns=list(COLD_START_COLUMNS))
        old = self.cold_start()
        if len(old) and len(frame):
            key = [Cs.CONFIG_ID, Cs.REPLICA]
            new_keys = set(map(tuple, frame[key].astype(str).to_numpy()))
            keep = [tuple(k) not in new_keys for k in old[key].astype(str).to_numpy()]
            old = old[keep]
        if len(old):
            frame = pd.concat([old, frame], ignore_index=True) if len(frame) else old
        frame = frame.astype(COLD_START_COLUMNS)
        path = self.path / COLD_START_FILE
        tmp = path.with_suffix(".tmp")
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)

    def write_search(self, search: Mapping[str, Any]) -> None:
        """Store the SLO-edge search: per configuration id, its probes and bracket."""
        _atomic_write(self.path / SEARCH_FILE, json.dumps(search, indent=2))

    def write_state(self, state: Mapping[str, Any]) -> None:
        """Store resume state: ``done`` point keys, ``point_ids`` by key, ``auto`` findings."""
        _atomic_write(self.path / STATE_FILE, json.dumps(state, indent=2))

    def state(self) -> dict[str, Any]:
        """Resume state (see :meth:`write_state`); empty for a new run."""
        path = self.path / STATE_FILE
        if not path.exists():
            return {}
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    # ------------------------------------------------------------------ reading
    def spec_text(self) -> str:
        """The spec as given."""
        return (self.path / SPEC_FILE).read_text()

    def environment(self) -> dict[str, Any]:
        """environment.json, or {} when absent."""
        path = self.path / ENVIRONMENT_FILE
        if not path.exists():
            return {}
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def points(self) -> pd.DataFrame:
        """Per-point summaries."""
        import pandas as pd

        path = self.path / POINTS_FILE
        if not path.exists():
            return pd.DataFrame(columns=list(POINT_COLUMNS))
        text_columns = (Point.STATUS_DETAIL, Point.INVALID_REASON)
        # Read as text: an all-empty column would otherwise load as float64 NaN, and filling
        # float NaN with "" is deprecated in pandas (a warning now, an error later).
        frame = pd.read_csv(path, keep_default_na=True, dtype=dict.fromkeys(text_columns, str))
        for c in text_columns:
            frame[c] = frame[c].fillna("").astype(str)
        return frame

    def requests(self) -> pd.DataFrame:
        """All raw request rows of the run."""
        import pandas as pd

        files = sorted((self.path / REQUESTS_DIR).glob("*.parquet"))
        if not files:
            return pd.DataFrame(columns=list(REQUEST_COLUMNS))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    def timeslices(self) -> pd.DataFrame:
        """Every point's timeslices (empty, with the columns, when the run has none)."""
        import pandas as pd

        path = self.path / TIMESLICES_FILE
        if not path.exists():
            return pd.DataFrame(columns=list(TIMESLICE_COLUMNS)).astype(TIMESLICE_COLUMNS)
        return pd.read_parquet(path)

    def workers(self) -> pd.DataFrame:
        """Per-worker rows of distributed points (empty, with the columns, without workers)."""
        import pandas as pd

        path = self.path / WORKERS_FILE
        if not path.exists():
            return pd.DataFrame(columns=list(WORKER_COLUMNS)).astype(WORKER_COLUMNS)
        return pd.read_csv(path, dtype=WORKER_COLUMNS)

    def cold_start(self) -> pd.DataFrame:
        """Each replica's cold start (``cold_start.csv``; empty, with the columns, when absent)."""
        import pandas as pd

        path = self.path / COLD_START_FILE
        if not path.exists():
            return pd.DataFrame(columns=list(COLD_START_COLUMNS)).astype(COLD_START_COLUMNS)
        text = [c for c, t in COLD_START_COLUMNS.items() if t == "string"]
        # Text read as text (an empty detail must stay "", not become NaN).
        frame = pd.read_csv(path, dtype=dict.fromkeys(text, str))
        for c in text:
            frame[c] = frame[c].fillna("")
        return frame.astype(COLD_START_COLUMNS)

    def search(self) -> dict[str, Any]:
        """search.json (see :meth:`write_search`), or {} when the run did not search."""
        path = self.path / SEARCH_FILE
        if not path.exists():
            return {}
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def server(self) -> pd.DataFrame:
        """All server metric deltas of the run."""
        import pandas as pd

        files = sorted((self.path / SERVER_DIR).glob("*.parquet"))
        if not files:
            return pd.DataFrame(columns=list(SERVER_COLUMNS))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
