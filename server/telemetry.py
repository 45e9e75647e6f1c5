"""GPU telemetry through NVML (``nvidia-ml-py``, ``import pynvml``), as Prometheus series with Triton's names.

The values are read at scrape time by a collector on the server's registry rather than sampled by a thread:
NVML answers in microseconds, energy is a counter kept by the driver (so the mean power over any interval is
the difference of two scrapes), and utilization is already averaged by the driver over its own sample period.
A scrape therefore never shows a stale sample, and an idle server does no work for telemetry.

No ``pynvml``, no driver, or no GPU: no GPU series and no error, one info line in the log. A reading a device
does not support (e.g. energy on older GPUs) is left out for that device only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from types import ModuleType

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LABEL = "gpu_uuid"

# (name, help, type, reading of one device handle in the metric's unit)
_FAMILIES: tuple[tuple[str, str, str, Callable[[ModuleType, object], float]], ...] = (
    (
        "nv_gpu_utilization",
        "GPU utilization rate [0.0 - 1.0)",
        "gauge",
        lambda nvml, handle: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
    ),
    (
        "nv_gpu_memory_total_bytes",
        "GPU total memory, in bytes",
        "gauge",
        lambda nvml, handle: float(nvml.nvmlDeviceGetMemoryInfo(handle).total),
    ),
    (
        "nv_gpu_memory_used_bytes",
        "GPU used memory, in bytes",
        "gauge",
        lambda nvml, handle: float(nvml.nvmlDeviceGetMemoryInfo(handle).used),
    ),
    (
        "nv_gpu_power_usage",
        "GPU power usage in watts",
        "gauge",
        lambda nvml, handle: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
    ),
    (
        "nv_gpu_power_limit",
        "GPU power management limit in watts",
        "gauge",
        lambda nvml, handle: nvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0,
    ),
    (
        "nv_energy_consumption",
        "GPU energy consumption in joules since the Triton Server started",
        "counter",
        lambda nvml, handle: nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0,
    ),
)


class GpuCollector(Collector):
    """Triton's ``nv_gpu_*`` and ``nv_energy_consumption`` series, one sample per GPU labelled ``gpu_uuid``."""

    def __init__(self, nvml: ModuleType, handles: list[tuple[str, object]]) -> None:
        self._nvml = nvml
        self._handles = handles

    @property
    def gpu_count(self) -> int:
        return len(self._handles)

    def describe(self) -> Iterator[Metric]:
        for name, help_text, kind, _ in _FAMILIES:
            yield Metric(name, help_text, kind)

    def collect(self) -> Iterator[Metric]:
        for name, help_text, kind, read in _FAMILIES:
            family = Metric(name, help_text, kind)
            for uuid, handle in self._handles:
                try:
                    value = read(self._nvml, handle)
                except self._nvml.NVMLError as exc:
                    log.debug("%s unavailable for GPU %s: %s", name, uuid, exc)
                    continue
                family.add_sample(name, {LABEL: uuid}, value)
            yield family

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.debug("nvmlShutdown: %s", exc)


def start_nvml(nvml: ModuleType | None, why_none: str) -> ModuleType | None:
    """``nvml`` (``pynvml`` when None) initialized, or None, logged once at info level as ``why_none: reason``,
    when nvidia-ml-py is missing or NVML does not start."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            log.info("%s: nvidia-ml-py is not installed (pip install nvidia-ml-py)", why_none)
            return None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        log.info("%s: NVML did not start (%s)", why_none, exc)
        return None
    return nvml


def open_gpu_collector(nvml: ModuleType | None = None) -> GpuCollector | None:
    """A collector over every GPU NVML sees, or None (logged once, at info level) when there is none to watch.

    ``nvml`` is the ``pynvml`` module, imported here when not given.
    """
    nvml = start_nvml(nvml, "no GPU telemetry")
    if nvml is None:
        return None
    try:
        handles = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            handles.append((uuid.decode() if isinstance(uuid, bytes) else str(uuid), handle))
    except nvml.NVMLError as exc:
        log.info("no GPU telemetry: NVML could not list the GPUs (%s)", exc)
        _shutdown(nvml)
        return None
    if not handles:
        log.info("no GPU telemetry: NVML sees no GPU")
        _shutdown(nvml)
        return None
    log.info("GPU telemetry from NVML for %d GPU(s): %s", len(handles), ", ".join(uuid for uuid, _ in handles))
    return GpuCollector(nvml, handles)


def _shutdown(nvml: ModuleType) -> None:
    try:
        nvml.nvmlShutdown()
    except nvml.NVMLError:
        pass
