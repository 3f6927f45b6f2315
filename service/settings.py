"""ServiceSettings: every knob of the service, settable by ``TOKENBOOTH_*`` env var or CLI flag."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import TokenboothError
from telemetry.vllm_compat import MetricsCompat

__all__ = [
    "ADAPTIVE_BURST_QUIET",
    "ADAPTIVE_HOLD_FRACTION",
    "ADAPTIVE_POLICY",
    "BATCH_POLICIES",
    "DEFAULT_BATCH_POLICY",
    "QUANTIZATIONS",
    "RECENT_BATCHES",
    "SPARE_WORKER_MEAN_BATCH",
    "TRITON_POLICY",
    "ApiKeyFileError",
    "ServiceSettings",
    "read_api_key_file",
]

QUANTIZATIONS: Final[tuple[str, ...]] = (
    "int8",
    "int8_float32",
    "int8_float16",
    "float16",
    "float32",
    "int16",
)
"""Weight quantizations a model can be built with (CTranslate2 ``quantization``)."""

TRITON_POLICY: Final = "triton"
"""A batch that is not full starts ``max_batch_delay_ms`` after its oldest request arrived."""
ADAPTIVE_POLICY: Final = "adaptive"
"""A batch that is not full starts once no request joined it for ``max_batch_delay_ms`` (held
at most a few percent of a batch's duration), grouping prompts of similar length."""
BATCH_POLICIES: Final[tuple[str, ...]] = (TRITON_POLICY, ADAPTIVE_POLICY)
"""Batch formation policies (``service.batcher.BatcherConfig``)."""
DEFAULT_BATCH_POLICY: Final = ADAPTIVE_POLICY
"""What measured best (README, "Benchmarks"; `tokenbooth bench compare` triton vs adaptive, one
run): equal at 1 stream and under Poisson 1 and 2 req/s (ratios 0.96-1.04, within the spread),
and at 32 closed-loop streams TTFT p50 / p95 911 / 1,025 ms against 2,579 / 3,847 with full
batches and 3 % more tokens/s. ``triton`` stays available for Triton's semantics."""
ADAPTIVE_HOLD_FRACTION: Final = 0.05
"""Adaptive policy: a batch that is not full is held at most this share of a recent batch's
duration after its oldest request (never less than ``max_batch_delay_ms``)."""
ADAPTIVE_BURST_QUIET: Final = 3.0
"""Adaptive policy: the quiet gap that closes a batch, in ``max_batch_delay_ms``, while its
newest request came within the hold limit after a batch finished. Closed-loop clients re-send
as their batch ends, in a burst whose gaps exceed 5 ms on a loaded 2-core VM (`tokenbooth bench
engine`: mean batch 10.8 of 16 with one gap of delay, 16.0 with 12 ms); a request that arrives
long after the last batch ended is still held one delay only, so idle TTFT does not grow."""
SPARE_WORKER_MEAN_BATCH: Final = 2.0
"""A spare batch worker starts a batch only while the running batches hold fewer requests than
this many each, on average. A third thread on two cores slows every running batch by a third:
worth it while they are nearly empty (independent arrivals at light load, where a request that
finds every regular worker busy would otherwise wait a whole batch), not once they hold a few
requests each. Closed-loop clients whose group ran on a spare then wait for a regular worker
and merge into its batch instead of keeping a third group alive (`tokenbooth bench compare`,
8 closed-loop streams: a spare under a half-of-the-slots rule kept three groups and lost 10 %
of the throughput; under this rule 8 and 32 streams are unchanged, and Poisson 1 req/s over
150 s windows gave TTFT p95 241 / 473 ms against 613 / 583 without a spare, README)."""
RECENT_BATCHES: Final = 32
"""Finished batches whose mean duration is "a recent batch's duration" (adaptive hold, and the
``Retry-After`` of a full queue)."""


class ApiKeyFileError(TokenboothError):
    """The API key file cannot be read or is empty."""


class ServiceSettings(BaseSettings):
    """Configuration of one service replica.

    Every field is read from ``TOKENBOOTH_<FIELD>`` (case-insensitive) and can be overridden by the
    ``tokenbooth serve`` flag of the same name. Tests build settings objects directly.
    """

    model_config = SettingsConfigDict(env_prefix="TOKENBOOTH_", extra="ignore")

    _file_api_key: SecretStr | None = PrivateAttr(default=None)

    # --- model and engine ---
    model: Path | None = Field(
        default=None,
        description="CTranslate2 dir, GGUF file or HF dir; default: built-in SmolLM2",
    )
    served_model_name: str | None = Field(
        default=None, description="Name clients use in 'model'; default: the manifest name"
    )
    engine: Literal["ctranslate2", "fake"] = Field(
        default="ctranslate2", description="'fake' is a deterministic test/calibration engine"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto picks CUDA when CTranslate2 sees a GPU"
    )
    compute_type: str = Field(
        default="default",
        description="CTranslate2 compute type; default: int8 on CPU, int8_float16 on CUDA",
    )
    quantization: str = Field(default="int8", description="quantization when building the model")
    models_dir: Path | None = Field(default=None, description="model cache directory")
    batch_workers: int = Field(
        default=2, ge=1, le=64, description="batches run in parallel (CTranslate2 inter_threads)"
    )
    spare_workers: int = Field(
        default=1,
        ge=0,
        le=64,
        description="extra batch workers, used only while the running batches are nearly empty",
    )
    intra_threads: int = Field(
        default=1, ge=0, le=256, description="threads per batch (CTranslate2 intra_threads; 0=auto)"
    )

    # --- dynamic batching ---
    max_batch_size: int = Field(default=16, ge=1, le=1024, description="requests per batch")
    max_batch_delay_ms: float = Field(
        default=5.0, ge=0.0, le=10_000.0, description="max wait after the first queued request"
    )
    batch_policy: str = Field(
        default=DEFAULT_BATCH_POLICY,
        description=f"when a batch that is not full starts: {' | '.join(BATCH_POLICIES)}",
    )
    max_queue_size: int = Field(
        default=256, ge=1, description="requests admitted but not yet running; beyond: 429"
    )

    # --- request limits ---
    max_tokens_cap: int = Field(default=1024, ge=1, description="largest max_tokens accepted")
    default_max_tokens: int = Field(default=256, ge=1, description="max_tokens when omitted")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="request body limit")
    request_timeout_s: float = Field(default=300.0, gt=0, description="per-request time limit")
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="SIGTERM: in-flight grace; what is left then ends with a 503 / error event",
    )
    max_messages: int = Field(default=2048, ge=1, description="chat messages per request")
    allow_ignore_eos: bool = Field(
        default=True, description="honour the 'ignore_eos' request field (fixed-length benchmarks)"
    )

    # --- network and auth ---
    host: str = Field(default="127.0.0.1", description="bind address")
    port: int = Field(default=8000, ge=0, le=65535, description="bind port (0: any free port)")
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="time for a request's headers to arrive (slowloris bound)"
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="time for a request's body to arrive; beyond: 408"
    )
    keep_alive_timeout_s: float = Field(
        default=5.0, gt=0, description="idle keep-alive connections are closed after this"
    )
    write_timeout_s: float = Field(
        default=10.0, gt=0, description="a client that reads nothing this long is disconnected"
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="open connections; capped below the fd limit; idle ones are evicted first",
    )
    max_header_bytes: int = Field(default=65_536, ge=1024, description="request head size limit")
    send_buffer_bytes: int = Field(
        default=0,
        ge=0,
        description="kernel send buffer per connection (SO_SNDBUF, like nginx's sndbuf); "
        "0: the kernel's autotuning. Smaller: a client that stops reading is noticed sooner",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="require 'Bearer <key>' if set; as a flag it shows in ps: prefer the env "
        "var or api_key_file",
    )
    api_key_file: Path | None = Field(
        default=None, description="file holding the API key (read once at start; one line)"
    )
    protect_ops_endpoints: bool = Field(
        default=False, description="also require the API key on /metrics and /docs (OpenAPI)"
    )
    protect_health_endpoints: bool = Field(
        default=False,
        description="also require the API key on /health/live and /health/ready (probes need it)",
    )

    # --- SLO thresholds (become histogram bucket boundaries) ---
    ttft_slo_ms: float | None = Field(default=500.0, gt=0, description="TTFT SLO")
    tpot_slo_ms: float | None = Field(default=100.0, gt=0, description="time-per-output-token SLO")
    e2e_slo_ms: float | None = Field(default=None, gt=0, description="end-to-end latency SLO")

    # --- telemetry ---
    log_level: str = Field(default="INFO", description="log level")
    log_json: bool = Field(default=True, description="JSON log lines (false: plain text)")
    gpu_sample_interval_s: float = Field(default=5.0, gt=0, description="NVML sampling period")
    trace_prompts: bool = Field(default=False, description="record prompt text on spans")
    metrics_compat: MetricsCompat = Field(
        default="none",
        description="'vllm': also export vllm:* names (num_requests_waiting, TTFT, ...) for "
        "vLLM dashboards and KEDA recipes",
    )

    # --- fake engine ---
    fake_ttft_ms: float = Field(default=50.0, ge=0, description="fake engine: time to first token")
    fake_itl_ms: float = Field(default=10.0, ge=0, description="fake engine: inter-token latency")
    fake_context_length: int = Field(default=2048, ge=16, description="fake engine: context")

    warmup: bool = Field(default=True, description="run one generation before reporting ready")
    gil_switch_interval_ms: float = Field(
        default=5.0,
        gt=0,
        le=100,
        description="CPython GIL switch interval: how long the event loop can delay engine threads",
    )

    @field_validator("batch_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in BATCH_POLICIES:
            raise ValueError(f"must be one of {', '.join(BATCH_POLICIES)}")
        return value

    @field_validator("quantization")
    @classmethod
    def _known_quantization(cls, value: str) -> str:
        if value not in QUANTIZATIONS:
            raise ValueError(f"must be one of {', '.join(QUANTIZATIONS)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> ServiceSettings:
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("default_max_tokens must not exceed max_tokens_cap")
        return self

    @model_validator(mode="after")
    def _read_api_key_file(self) -> ServiceSettings:
        if self.api_key_file is None:
            return self
        if self.api_key is not None:
            raise ValueError("set api_key or api_key_file, not both")
        self._file_api_key = SecretStr(read_api_key_file(self.api_key_file))
        return self

    @property
    def workers(self) -> int:
        """Engine threads that run batches: the regular workers and the spares."""
        return self.batch_workers + self.spare_workers

    @property
    def effective_api_key(self) -> SecretStr | None:
        """The key clients must send: ``api_key``, or the content of ``api_key_file``."""
        return self.api_key if self.api_key is not None else self._file_api_key


def read_api_key_file(path: Path) -> str:
    """The API key in ``path``, without its trailing newline (as ``echo key > file`` writes it).

    Raises:
        ApiKeyFileError: the file cannot be read or holds no key; raised as is (not wrapped in a
            ValidationError) so ``tokenbooth serve`` fails at start with one clear line.
    """
    try:
        key = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ApiKeyFileError(f"api_key_file {path}: cannot read the API key: {reason}") from exc
    if not key:
        raise ApiKeyFileError(f"api_key_file {path}: the file is empty, no API key in it")
    return key
