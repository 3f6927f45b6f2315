"""GpuSampler against a fake NVML module: GPU present, absent, and partly unsupported."""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from telemetry import names
from telemetry.gpu import GpuSampler
from telemetry.metrics import render_metrics

GPU_SERIES = (
    names.TOKENBOOTH_GPU_UTILIZATION,
    names.TOKENBOOTH_GPU_MEMORY_USED,
    names.TOKENBOOTH_GPU_MEMORY_TOTAL,
    names.TOKENBOOTH_GPU_POWER,
    names.TOKENBOOTH_GPU_TEMPERATURE,
)


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


@dataclass
class FakeGpu:
    uuid: str | bytes
    utilization: int = 0
    memory_used: int = 0
    memory_total: int = 0
    power_mw: int | None = None  # None: "Not Supported"
    temperature: int = 0


@dataclass
class FakeNvmlState:
    gpus: list[FakeGpu]
    init_error: str | None = None
    calls: list[str] = field(default_factory=list)


def fake_nvml(state: FakeNvmlState) -> types.ModuleType:
    """A module exposing the pynvml functions GpuSampler uses, backed by ``state``."""
    module = types.ModuleType("fake_pynvml")

    def init() -> None:
        state.calls.append("init")
        if state.init_error:
            raise FakeNVMLError(state.init_error)

    def handle(index: int) -> FakeGpu:
        return state.gpus[index]

    def power(gpu: FakeGpu) -> int:
        if gpu.power_mw is None:
            raise FakeNVMLError("Not Supported")
        return gpu.power_mw

    def temperature(gpu: FakeGpu, sensor: int) -> int:
        assert sensor == module.NVML_TEMPERATURE_GPU
        return gpu.temperature

    module.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
    module.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlShutdown = lambda: state.calls.append("shutdown")  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: len(state.gpus)  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = handle  # type: ignore[attr-defined]
    module.nvmlDeviceGetUUID = lambda gpu: gpu.uuid  # type: ignore[attr-defined]
    module.nvmlDeviceGetUtilizationRates = lambda gpu: types.SimpleNamespace(  # type: ignore[attr-defined]
        gpu=gpu.utilization, memory=0
    )
    module.nvmlDeviceGetMemoryInfo = lambda gpu: types.SimpleNamespace(  # type: ignore[attr-defined]
        used=gpu.memory_used, total=gpu.memory_total, free=gpu.memory_total - gpu.memory_used
    )
    module.nvmlDeviceGetPowerUsage = power  # type: ignore[attr-defined]
    module.nvmlDeviceGetTemperature = temperature  # type: ignore[attr-defined]
    return module


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def two_gpus() -> FakeNvmlState:
    return FakeNvmlState(
        gpus=[
            FakeGpu(
                uuid=b"GPU-aaaa",
                utilization=37,
                memory_used=2 * 1024**3,
                memory_total=80 * 1024**3,
                power_mw=123_456,
                temperature=61,
            ),
            FakeGpu(
                uuid="GPU-bbbb",
                utilization=0,
                memory_used=0,
                memory_total=16 * 1024**3,
                power_mw=None,
                temperature=30,
            ),
        ]
    )


def gpu_value(registry: CollectorRegistry, name: str, index: int, uuid: str) -> float | None:
    return registry.get_sample_value(
        name, {names.LABEL_GPU: str(index), names.LABEL_GPU_UUID: uuid}
    )


def gpu_samples(registry: CollectorRegistry) -> list[str]:
    return [s.name for family in registry.collect() for s in family.samples if s.name in GPU_SERIES]


async def test_samples_every_gpu_on_entry(
    registry: CollectorRegistry, two_gpus: FakeNvmlState
) -> None:
    async with GpuSampler(registry, interval_s=60, nvml=fake_nvml(two_gpus)) as sampler:
        assert sampler.available
        assert sampler.gpu_count == 2
        assert sampler.unavailable_reason is None
        assert registry.get_sample_value(names.TOKENBOOTH_GPU_AVAILABLE) == 1
        assert gpu_value(registry, names.TOKENBOOTH_GPU_UTILIZATION, 0, "GPU-aaaa") == 0.37
        assert gpu_value(registry, names.TOKENBOOTH_GPU_MEMORY_USED, 0, "GPU-aaaa") == 2 * 1024**3
        assert gpu_value(registry, names.TOKENBOOTH_GPU_MEMORY_TOTAL, 0, "GPU-aaaa") == 80 * 1024**3
        assert gpu_value(registry, names.TOKENBOOTH_GPU_POWER, 0, "GPU-aaaa") == 123.456
        assert gpu_value(registry, names.TOKENBOOTH_GPU_TEMPERATURE, 0, "GPU-aaaa") == 61
        assert gpu_value(registry, names.TOKENBOOTH_GPU_UTILIZATION, 1, "GPU-bbbb") == 0.0
        assert gpu_value(registry, names.TOKENBOOTH_GPU_MEMORY_TOTAL, 1, "GPU-bbbb") == 16 * 1024**3
    assert two_gpus.calls == ["init", "shutdown"]


async def test_unsupported_field_is_omitted_and_logged_once(
    registry: CollectorRegistry, two_gpus: FakeNvmlState, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="telemetry.gpu"):
        async with GpuSampler(registry, interval_s=60, nvml=fake_nvml(two_gpus)) as sampler:
            await sampler.sample()
            await sampler.sample()
            assert gpu_value(registry, names.TOKENBOOTH_GPU_POWER, 1, "GPU-bbbb") is None
            assert gpu_value(registry, names.TOKENBOOTH_GPU_TEMPERATURE, 1, "GPU-bbbb") == 30
            body, _ = render_metrics(registry, None)
            assert body.count(f"{names.TOKENBOOTH_GPU_POWER}{{".encode()) == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "telemetry.gpu"]
    assert warnings == ["gpu: power not readable on GPU 1 (Not Supported); series omitted"]


async def test_field_that_starts_failing_is_removed_not_left_stale(
    registry: CollectorRegistry, two_gpus: FakeNvmlState
) -> None:
    async with GpuSampler(registry, interval_s=60, nvml=fake_nvml(two_gpus)) as sampler:
        assert gpu_value(registry, names.TOKENBOOTH_GPU_POWER, 0, "GPU-aaaa") == 123.456
        two_gpus.gpus[0].power_mw = None
        await sampler.sample()
        assert gpu_value(registry, names.TOKENBOOTH_GPU_POWER, 0, "GPU-aaaa") is None
        two_gpus.gpus[0].power_mw = 50_000
        await sampler.sample()
        assert gpu_value(registry, names.TOKENBOOTH_GPU_POWER, 0, "GPU-aaaa") == 50.0


async def test_interval_task_keeps_sampling(
    registry: CollectorRegistry, two_gpus: FakeNvmlState
) -> None:
    async with GpuSampler(registry, interval_s=0.01, nvml=fake_nvml(two_gpus)):
        two_gpus.gpus[0].utilization = 99
        for _ in range(200):
            if gpu_value(registry, names.TOKENBOOTH_GPU_UTILIZATION, 0, "GPU-aaaa") == 0.99:
                break
            await asyncio.sleep(0.01)
        assert gpu_value(registry, names.TOKENBOOTH_GPU_UTILIZATION, 0, "GPU-aaaa") == 0.99


async def test_exit_drops_series_and_marks_unavailable(
    registry: CollectorRegistry, two_gpus: FakeNvmlState
) -> None:
    sampler = GpuSampler(registry, interval_s=0.01, nvml=fake_nvml(two_gpus))
    async with sampler:
        assert len(gpu_samples(registry)) == 9
    assert gpu_samples(registry) == []
    assert registry.get_sample_value(names.TOKENBOOTH_GPU_AVAILABLE) == 0
    assert not sampler.available
    assert sampler.unavailable_reason == "GPU sampler stopped"


def _assert_absent(registry: CollectorRegistry) -> None:
    assert registry.get_sample_value(names.TOKENBOOTH_GPU_AVAILABLE) == 0
    assert gpu_samples(registry) == []
    body, _ = render_metrics(registry, None)
    for name in GPU_SERIES:
        assert f"\n{name}{{".encode() not in body
        assert f"# TYPE {name} gauge".encode() in body


async def test_nvml_init_failure_exports_nothing_and_warns_once(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    state = FakeNvmlState(gpus=[FakeGpu(uuid="GPU-x")], init_error="NVML Shared Library Not Found")
    with caplog.at_level(logging.WARNING, logger="telemetry.gpu"):
        async with GpuSampler(registry, interval_s=0.01, nvml=fake_nvml(state)) as sampler:
            await sampler.sample()
            await asyncio.sleep(0.03)
            assert not sampler.available
            assert sampler.unavailable_reason == (
                "NVML initialisation failed: FakeNVMLError: NVML Shared Library Not Found"
            )
            _assert_absent(registry)
    warnings = [r for r in caplog.records if r.name == "telemetry.gpu"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "NVML Shared Library Not Found" in warnings[0].getMessage()
    assert state.calls == ["init"]


async def test_zero_devices_is_unavailable(registry: CollectorRegistry) -> None:
    state = FakeNvmlState(gpus=[])
    async with GpuSampler(registry, nvml=fake_nvml(state)) as sampler:
        assert not sampler.available
        assert sampler.unavailable_reason == "NVML reports 0 GPUs"
        _assert_absent(registry)
    assert state.calls == ["init", "shutdown"]


async def test_missing_pynvml_is_unavailable(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    async with GpuSampler(registry) as sampler:
        assert not sampler.available
        reason = sampler.unavailable_reason
        assert reason is not None
        assert reason.startswith("pynvml (package nvidia-ml-py) is not importable")
        _assert_absent(registry)


def test_interval_must_be_positive(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        GpuSampler(registry, interval_s=0)


async def test_real_nvml_reports_gpus_or_their_absence(registry: CollectorRegistry) -> None:
    # Uses the installed nvidia-ml-py: on a GPU host every GPU has a memory total; elsewhere
    # the absence contract holds. Either way nothing is faked.
    async with GpuSampler(registry) as sampler:
        if sampler.available:
            assert registry.get_sample_value(names.TOKENBOOTH_GPU_AVAILABLE) == 1
            totals = [
                s.value
                for family in registry.collect()
                for s in family.samples
                if s.name == names.TOKENBOOTH_GPU_MEMORY_TOTAL
            ]
            assert len(totals) == sampler.gpu_count >= 1
            assert all(total > 0 for total in totals)
        else:
            assert sampler.unavailable_reason
            _assert_absent(registry)


@pytest.mark.gpu
async def test_real_gpu_is_sampled(registry: CollectorRegistry) -> None:
    async with GpuSampler(registry) as sampler:
        if not sampler.available:
            pytest.skip(f"no GPU: {sampler.unavailable_reason}")
        samples = [s for family in registry.collect() for s in family.samples]
        utilization = [s for s in samples if s.name == names.TOKENBOOTH_GPU_UTILIZATION]
        assert len({s.labels[names.LABEL_GPU_UUID] for s in utilization}) == sampler.gpu_count
        assert all(s.labels[names.LABEL_GPU_UUID].startswith("GPU-") for s in utilization)
        assert all(0.0 <= s.value <= 1.0 for s in utilization)
        temperatures = [s.value for s in samples if s.name == names.TOKENBOOTH_GPU_TEMPERATURE]
        assert temperatures and all(0 < t < 120 for t in temperatures)
        used = [s.value for s in samples if s.name == names.TOKENBOOTH_GPU_MEMORY_USED]
        total = [s.value for s in samples if s.name == names.TOKENBOOTH_GPU_MEMORY_TOTAL]
        assert len(used) == len(total) == sampler.gpu_count
        assert all(0 < u <= t for u, t in zip(used, total, strict=True))
