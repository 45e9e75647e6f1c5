"""Power, energy and clocks of the bench's GPU through NVML (``nvidia-ml-py``, ``import pynvml``), over one timed loop.

A :class:`PowerSampler` reads the device every ``interval_s`` in a background thread while a batch size is timed,
keeping running sums rather than the samples (memory stays constant; the count is bounded by the window over the
interval). The energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ since the driver loaded) is read at
the window's two ends: its difference is the energy, which covers every instant, not just the sampled ones.
Where the counter is not supported (older GPUs) or does not advance, the energy is the sampled mean power times
the window. Units follow the server's GPU series (:mod:`ipsbench.server.telemetry`): watts, and utilization as a
fraction 0..1.

No ``pynvml``, no driver, no GPU, or a CPU device: :func:`open_power_sampler` gives None and the bench's power
fields stay null, without error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

from ipsbench.server.telemetry import _shutdown, start_nvml

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.05
MIN_INTERVAL_S = 0.01
MAX_INTERVAL_S = 1.0

# Reasons NVML gives for holding the SM clock below its maximum; "gpu_idle" is left out, since a batch loop that
# waits on the host between calls is idle, not held back.
_REASON_BITS = (
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
)


@dataclass
class PowerReading:
    """What a sampled window measured; every field None where the device did not say."""

    power_w: float | None = None
    """Mean power over the window: the energy counter's difference over the window's time where it works, else
    the mean of the sampled power readings."""
    energy_j: float | None = None
    energy_source: str | None = None
    """``counter`` (NVML's energy counter) or ``sampled_power`` (mean sampled power × the window's time)."""
    gpu_utilization: float | None = None
    """Mean of NVML's utilization over the samples, as a fraction 0..1 (the server's ``nv_gpu_utilization``)."""
    sm_clock_mhz: dict[str, float] | None = None
    """``mean``, ``min``, ``max`` of the sampled SM clock."""
    max_sm_clock_mhz: float | None = None
    memory_used_mib: float | None = None
    """The most device memory in use in any sample (the whole device's, not only this process's)."""
    power_samples: int = 0
    throttled: list[str] | None = None
    """Reasons NVML gave for holding the clocks down in any sample (``sw_power_cap``, ``hw_thermal_slowdown``, ...),
    empty when none was; None where NVML does not report them."""


@dataclass
class _Sums:
    count: int = 0
    power_w: float = 0.0
    power_count: int = 0
    utilization: float = 0.0
    utilization_count: int = 0
    clock_sum: float = 0.0
    clock_min: float = float("inf")
    clock_max: float = 0.0
    clock_count: int = 0
    memory_mib: float | None = None
    reasons: set[str] | None = None


class PowerSampler:
    """Samples one GPU while a timed loop runs: ``with sampler.window() as reading: loop()``, then read ``reading``."""

    def __init__(self, nvml: ModuleType, handle: object, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self._nvml = nvml
        self._handle = handle
        self.interval_s = min(max(interval_s, MIN_INTERVAL_S), MAX_INTERVAL_S)
        self.max_sm_clock_mhz = self._read(lambda: float(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)))
        self._reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )

    @contextmanager
    def window(self) -> Iterator[PowerReading]:
        """Sample from entering until leaving; the yielded reading is filled in when the block ends."""
        reading = PowerReading(max_sm_clock_mhz=self.max_sm_clock_mhz)
        sums = _Sums()
        stop = threading.Event()
        thread = threading.Thread(target=self._sample_until, args=(stop, sums), name="bench-nvml", daemon=True)
        energy_before = self._energy_mj()
        started = time.perf_counter()
        thread.start()
        try:
            yield reading
        finally:
            stop.set()
            thread.join()
            elapsed_s = time.perf_counter() - started
            energy_after = self._energy_mj()
            self._sample(sums)  # the window's end, so a window shorter than the interval still has two samples
            self._summarize(reading, sums, elapsed_s, energy_before, energy_after)

    def _sample_until(self, stop: threading.Event, sums: _Sums) -> None:
        self._sample(sums)
        while not stop.wait(self.interval_s):
            self._sample(sums)

    def _sample(self, sums: _Sums) -> None:
        nvml, handle = self._nvml, self._handle
        power = self._read(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
        utilization = self._read(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
        clock = self._read(lambda: float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)))
        memory = self._read(lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
        reasons = self._read(lambda: self._reasons(handle)) if self._reasons is not None else None
        # Only the sampling thread writes, and the window reads after joining it: no lock needed.
        sums.count += 1
        if power is not None:
            sums.power_w += power
            sums.power_count += 1
        if utilization is not None:
            sums.utilization += utilization
            sums.utilization_count += 1
        if clock is not None:
            sums.clock_sum += clock
            sums.clock_min = min(sums.clock_min, clock)
            sums.clock_max = max(sums.clock_max, clock)
            sums.clock_count += 1
        if memory is not None:
            sums.memory_mib = max(memory, sums.memory_mib or 0.0)
        if reasons is not None:
            names = {name for name, bit in _REASON_BITS if int(reasons) & bit}
            sums.reasons = names | (sums.reasons or set())

    def _summarize(
        self, reading: PowerReading, sums: _Sums, elapsed_s: float, before: float | None, after: float | None
    ) -> None:
        reading.power_samples = sums.count
        mean_power = sums.power_w / sums.power_count if sums.power_count else None
        if before is not None and after is not None and after > before and elapsed_s > 0:
            reading.energy_j = (after - before) / 1000.0
            reading.energy_source = "counter"
            reading.power_w = reading.energy_j / elapsed_s
        elif mean_power is not None:
            reading.energy_j = mean_power * elapsed_s
            reading.energy_source = "sampled_power"
            reading.power_w = mean_power
        if sums.utilization_count:
            reading.gpu_utilization = sums.utilization / sums.utilization_count
        if sums.clock_count:
            reading.sm_clock_mhz = {
                "mean": sums.clock_sum / sums.clock_count, "min": sums.clock_min, "max": sums.clock_max,
            }
        reading.memory_used_mib = sums.memory_mib
        reading.throttled = sorted(sums.reasons) if sums.reasons is not None else None

    def _energy_mj(self) -> float | None:
        return self._read(lambda: float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)))

    def _read(self, read):
        """One NVML reading, None where the device does not support it (NVMLError)."""
        try:
            return read()
        except self._nvml.NVMLError as exc:
            log.debug("NVML reading unavailable: %s", exc)
            return None

    def close(self) -> None:
        _shutdown(self._nvml)


def open_power_sampler(
    device: str, nvml: ModuleType | None = None, interval_s: float = DEFAULT_INTERVAL_S
) -> PowerSampler | None:
    """A sampler of the GPU behind ``device`` (``cuda:N``), or None for a CPU device or where NVML cannot watch it.

    ``nvml`` is the ``pynvml`` module, imported here when not given.
    """
    if not device.startswith("cuda"):
        return None
    nvml = start_nvml(nvml, "no power figures")
    if nvml is None:
        return None
    try:
        handle = _handle(nvml, int(device.partition(":")[2] or 0))
    except (nvml.NVMLError, ValueError) as exc:
        log.info("no power figures: NVML cannot find %s (%s)", device, exc)
        _shutdown(nvml)
        return None
    return PowerSampler(nvml, handle, interval_s)


def _handle(nvml: ModuleType, cuda_index: int) -> object:
    """The NVML handle of CUDA device ``cuda_index``: NVML numbers every GPU of the machine, CUDA only those
    ``CUDA_VISIBLE_DEVICES`` lists (by index or by UUID)."""
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    if cuda_index < len(visible):
        entry = visible[cuda_index]
        if entry.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(entry))
        if entry.startswith("GPU-"):
            return nvml.nvmlDeviceGetHandleByUUID(entry)
    return nvml.nvmlDeviceGetHandleByIndex(cuda_index)
