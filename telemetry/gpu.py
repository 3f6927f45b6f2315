"""NVML GPU sampler: utilization, memory, power and temperature as Prometheus gauges.

A host without the NVML library or without a GPU exports no GPU series at all,
``tokenbooth_gpu_available 0`` and one WARNING saying why; it never reports zeros that would
read as an idle GPU. A field a GPU does not support (power on some boards) is left out for that
GPU instead of being faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, Final, Self

from prometheus_client import CollectorRegistry, Gauge

from telemetry import names

__all__ = ["GpuSampler"]

logger = logging.getLogger(__name__)

_GPU_LABELS: Final = (names.LABEL_GPU, names.LABEL_GPU_UUID)
_UTILIZATION: Final = "utilization"
_MEMORY: Final = "memory"
_POWER: Final = "power"
_TEMPERATURE: Final = "temperature"


@dataclass(frozen=True, slots=True)
class _Device:
    index: int
    uuid: str
    handle: Any


@dataclass(slots=True)
class _Reading:
    device: _Device
    utilization: float | None = None
    memory_used: float | None = None
    memory_total: float | None = None
    power_watts: float | None = None
    temperature_celsius: float | None = None
    errors: dict[str, str] | None = None


def _text(value: object) -> str:
    # Older pynvml releases return bytes for strings, newer ones str.
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuSampler:
    """Sample every NVML GPU on an interval into gauges on ``registry``.

    Use as ``async with GpuSampler(registry) as sampler:`` in the app lifespan. NVML calls
    run in a worker thread (``asyncio.to_thread``) so a slow driver never stalls the event loop.

    Args:
        registry: Where the GPU gauges and ``tokenbooth_gpu_available`` are registered.
        interval_s: Seconds between samples; one sample is also taken on entry.
        nvml: An NVML module to use instead of importing ``pynvml`` (tests inject a fake).

    Raises:
        ValueError: ``interval_s`` is not positive.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        interval_s: float = 5.0,
        nvml: ModuleType | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._interval_s = interval_s
        self._injected = nvml
        self._nvml: ModuleType | None = None
        self._devices: list[_Device] = []
        self._reason: str | None = "GPU sampler not started"
        self._task: asyncio.Task[None] | None = None
        self._sample_lock = asyncio.Lock()
        self._reported_fields: set[tuple[int, str]] = set()

        self._available_gauge = Gauge(
            names.TOKENBOOTH_GPU_AVAILABLE,
            "1 when NVML reports at least one GPU, else 0 (then no GPU series exist).",
            registry=registry,
        )
        self._utilization = Gauge(
            names.TOKENBOOTH_GPU_UTILIZATION,
            "Fraction of the last NVML sample period the GPU was busy.",
            _GPU_LABELS,
            registry=registry,
            unit="ratio",
        )
        self._memory_used = Gauge(
            names.TOKENBOOTH_GPU_MEMORY_USED,
            "GPU memory in use by all processes.",
            _GPU_LABELS,
            registry=registry,
            unit="bytes",
        )
        self._memory_total = Gauge(
            names.TOKENBOOTH_GPU_MEMORY_TOTAL,
            "GPU memory installed.",
            _GPU_LABELS,
            registry=registry,
            unit="bytes",
        )
        self._power = Gauge(
            names.TOKENBOOTH_GPU_POWER,
            "GPU board power draw.",
            _GPU_LABELS,
            registry=registry,
            unit="watts",
        )
        self._temperature = Gauge(
            names.TOKENBOOTH_GPU_TEMPERATURE,
            "GPU core temperature.",
            _GPU_LABELS,
            registry=registry,
            unit="celsius",
        )
        self._gauges: tuple[Gauge, ...] = (
            self._utilization,
            self._memory_used,
            self._memory_total,
            self._power,
            self._temperature,
        )

    @property
    def available(self) -> bool:
        """Whether NVML is initialised and at least one GPU is being sampled."""
        return self._nvml is not None and bool(self._devices)

    @property
    def unavailable_reason(self) -> str | None:
        """Why no GPU is sampled (for health endpoints and reports); ``None`` when available."""
        return None if self.available else self._reason

    @property
    def gpu_count(self) -> int:
        """Number of GPUs being sampled."""
        return len(self._devices)

    async def __aenter__(self) -> Self:
        """Initialise NVML, take a first sample and start the interval task."""
        reason = await asyncio.to_thread(self._start)
        if reason is not None:
            self._reason = reason
            self._available_gauge.set(0)
            logger.warning("gpu: no GPU metrics will be exported: %s", reason)
            return self
        self._reason = None
        self._available_gauge.set(1)
        logger.info("gpu: sampling %d GPU(s) every %.3gs", len(self._devices), self._interval_s)
        await self.sample()
        self._task = asyncio.create_task(self._run(), name="tokenbooth-gpu-sampler")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop sampling, drop the GPU series (they would go stale) and shut NVML down."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for gauge in self._gauges:
            gauge.clear()
        self._available_gauge.set(0)
        nvml, self._nvml = self._nvml, None
        self._devices = []
        self._reason = "GPU sampler stopped"
        if nvml is not None:
            await asyncio.to_thread(self._shutdown, nvml)

    async def sample(self) -> None:
        """Take one sample of every GPU now and update the gauges (no-op when unavailable)."""
        if not self.available:
            return
        async with self._sample_lock:
            readings = await asyncio.to_thread(self._read_all)
            self._apply(readings)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.sample()
            except Exception:
                # Keep sampling: one bad read must not end GPU metrics for the process.
                logger.exception("gpu: sampling failed")

    def _start(self) -> str | None:
        try:
            nvml = (
                self._injected if self._injected is not None else importlib.import_module("pynvml")
            )
        except ImportError as exc:
            return f"pynvml (package nvidia-ml-py) is not importable: {exc}"
        try:
            nvml.nvmlInit()
        except Exception as exc:
            # NVMLError_LibraryNotFound / DriverNotLoaded land here on hosts without a GPU.
            return f"NVML initialisation failed: {type(exc).__name__}: {exc}"
        try:
            count = int(nvml.nvmlDeviceGetCount())
            devices: list[_Device] = []
            for index in range(count):
                try:
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                    uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                except nvml.NVMLError as exc:
                    logger.warning("gpu: skipping GPU %d: %s", index, exc)
                    continue
                devices.append(_Device(index=index, uuid=uuid, handle=handle))
        except nvml.NVMLError as exc:
            self._shutdown(nvml)
            return f"NVML device query failed: {type(exc).__name__}: {exc}"
        if not devices:
            self._shutdown(nvml)
            return "NVML found no usable GPU" if count else "NVML reports 0 GPUs"
        self._nvml = nvml
        self._devices = devices
        return None

    @staticmethod
    def _shutdown(nvml: ModuleType) -> None:
        try:
            nvml.nvmlShutdown()
        except Exception as exc:
            logger.warning("gpu: nvmlShutdown failed: %s", exc)

    def _read_all(self) -> list[_Reading]:
        nvml = self._nvml
        if nvml is None:
            return []
        readings: list[_Reading] = []
        for device in self._devices:
            reading = _Reading(device=device)
            errors: dict[str, str] = {}
            handle = device.handle
            try:
                reading.utilization = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            except nvml.NVMLError as exc:
                errors[_UTILIZATION] = str(exc)
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                reading.memory_used = float(memory.used)
                reading.memory_total = float(memory.total)
            except nvml.NVMLError as exc:
                errors[_MEMORY] = str(exc)
            try:
                reading.power_watts = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except nvml.NVMLError as exc:
                errors[_POWER] = str(exc)
            try:
                reading.temperature_celsius = float(
                    nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                )
            except nvml.NVMLError as exc:
                errors[_TEMPERATURE] = str(exc)
            reading.errors = errors or None
            readings.append(reading)
        return readings

    def _apply(self, readings: list[_Reading]) -> None:
        for reading in readings:
            labels = (str(reading.device.index), reading.device.uuid)
            for gauge, value in (
                (self._utilization, reading.utilization),
                (self._memory_used, reading.memory_used),
                (self._memory_total, reading.memory_total),
                (self._power, reading.power_watts),
                (self._temperature, reading.temperature_celsius),
            ):
                if value is None:
                    # Removed rather than left at its last value, which would be stale.
                    gauge.remove(*labels)
                else:
                    gauge.labels(*labels).set(value)
            for field, error in (reading.errors or {}).items():
                key = (reading.device.index, field)
                if key not in self._reported_fields:
                    self._reported_fields.add(key)
                    logger.warning(
                        "gpu: %s not readable on GPU %d (%s); series omitted",
                        field,
                        reading.device.index,
                        error,
                    )
