"""The engine bench's NVML figures: power, energy per image, utilization and SM clocks over each timed loop, from a
fake NVML module with known readings; none (and no error) on the CPU; the real sampler where a GPU is."""

from __future__ import annotations

import itertools
import math
import time
import types

import pytest

from ipsbench.server.bench import BatchSizeResult, BenchResult, BenchSettings, measure, run_bench
from ipsbench.server.bench_cli import header, row
from ipsbench.server.bench_power import open_power_sampler

POWER_FIELDS = ("power_w", "energy_j", "energy_source", "images_per_joule", "joules_per_image", "gpu_utilization",
                "sm_clock_mhz", "max_sm_clock_mhz", "memory_used_mib", "power_samples", "throttled")
SW_POWER_CAP, GPU_IDLE = 0x4, 0x1


class FakeNVMLError(Exception):
    pass


def fake_nvml(*, energy: bool = True, reasons: bool = True, power_mw=lambda: 200_000) -> types.SimpleNamespace:
    """A stand-in for ``pynvml`` on one GPU, in NVML's own units: ``power_mw()`` milliwatts, an energy counter
    advancing 200 J per second of real time (or NVMLError where ``energy`` is False), 75 % utilization, an SM clock
    cycling 1500, 1700, 1900 MHz under a 1980 MHz maximum, 4 GiB used, and the power cap (and idleness) as the
    clocks' reasons where ``reasons`` is True."""
    clocks = itertools.cycle([1500, 1700, 1900])
    state = {"init": 0, "shutdown": 0}

    def unsupported(*_):
        raise FakeNVMLError("Not Supported")

    def init():
        state["init"] += 1

    def shutdown():
        state["shutdown"] += 1

    module = types.SimpleNamespace(
        NVMLError=FakeNVMLError,
        NVML_CLOCK_SM=1,
        state=state,
        nvmlInit=init,
        nvmlShutdown=shutdown,
        nvmlDeviceGetHandleByIndex=lambda index: f"gpu{index}",
        nvmlDeviceGetPowerUsage=lambda handle: power_mw(),
        nvmlDeviceGetTotalEnergyConsumption=(
            (lambda handle: int(200_000 * time.perf_counter())) if energy else unsupported
        ),
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=75, memory=30),
        nvmlDeviceGetClockInfo=lambda handle, kind: next(clocks),
        nvmlDeviceGetMaxClockInfo=lambda handle, kind: 1980,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=4 * 2**30, total=80 * 2**30, free=0),
    )
    if reasons:
        module.nvmlDeviceGetCurrentClocksEventReasons = lambda handle: SW_POWER_CAP | GPU_IDLE
    return module


def busy_step(seconds: float = 0.002):
    """One 'batch': a few milliseconds of host work, as an engine call takes time."""
    def step():
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            pass
    return step


def measured(nvml, batch_size: int = 8, duration_s: float = 0.2) -> BatchSizeResult:
    sampler = open_power_sampler("cuda:0", nvml=nvml, interval_s=0.01)
    assert sampler is not None
    try:
        return measure(busy_step(), batch_size, 0.0, duration_s, sampler)
    finally:
        sampler.close()


def test_power_energy_and_clocks_over_the_timed_loop():
    nvml = fake_nvml()
    batch = measured(nvml)
    assert batch.energy_source == "counter"
    assert batch.power_w == pytest.approx(200, rel=0.02)
    # The counter covers the sampled window, which holds the timed loop (the thread's start and join add a little).
    assert batch.energy_j == pytest.approx(200 * batch.elapsed_s, rel=0.1)
    assert batch.images_per_joule == pytest.approx(batch.images_per_s / 200, rel=0.1)
    assert batch.joules_per_image == pytest.approx(200 / batch.images_per_s, rel=0.1)
    assert batch.images_per_joule * batch.joules_per_image == pytest.approx(1)
    assert batch.gpu_utilization == pytest.approx(0.75)
    clock = batch.sm_clock_mhz
    assert (clock["min"], clock["max"], batch.max_sm_clock_mhz) == (1500, 1900, 1980)
    assert 1500 < clock["mean"] < 1900
    assert batch.memory_used_mib == 4096
    # the window's two ends and the thread's samples every 10 ms between them; never more than the window allows
    assert 4 <= batch.power_samples <= batch.elapsed_s / 0.01 + 3
    assert batch.throttled == ["sw_power_cap"]  # idleness between calls is not a throttle
    assert (nvml.state["init"], nvml.state["shutdown"]) == (1, 1)


def test_energy_from_mean_power_when_the_counter_is_not_supported():
    readings = itertools.cycle([150_000, 250_000])
    batch = measured(fake_nvml(energy=False, reasons=False, power_mw=lambda: next(readings)))
    assert batch.energy_source == "sampled_power"
    assert batch.power_w == pytest.approx(200, abs=50 / batch.power_samples + 1e-9)
    assert batch.energy_j == pytest.approx(batch.power_w * batch.elapsed_s, rel=0.1)
    assert batch.images_per_joule == pytest.approx(batch.images / batch.energy_j)
    assert batch.throttled is None  # this NVML does not report reasons: unknown, not "none"
    assert batch.sm_clock_mhz is not None


def test_no_sampler_without_a_gpu_or_a_working_nvml():
    assert open_power_sampler("cpu", nvml=fake_nvml()) is None
    broken = fake_nvml()

    def no_driver():
        raise FakeNVMLError("Driver Not Loaded")

    broken.nvmlInit = no_driver
    assert open_power_sampler("cuda:0", nvml=broken) is None
    batch = measure(busy_step(), 4, 0.0, 0.02, None)
    assert batch.images_per_s > 0 and all(getattr(batch, name) is None for name in POWER_FIELDS)


def test_the_table_shows_images_per_watt_and_the_sm_clock_when_measured():
    batch = measured(fake_nvml())
    result = BenchResult(model="m", version=1, platform="onnxruntime_onnx", backend="onnxruntime", device="cuda:0",
                         device_name="GPU", precision="fp16", parameters={}, input_shapes={}, duration_s=0.2,
                         warmup_s=0)
    assert header(True).split()[6:9] == ["images/s/W", "W", "SM"]
    cells = row(result, batch, True).split()
    assert float(cells[4]) == pytest.approx(batch.images_per_joule, abs=0.006)
    assert cells[5] == "200"
    assert cells[6] == f"{batch.sm_clock_mhz['mean']:.0f}/1980"
    assert row(result, batch, True).endswith("throttled: sw_power_cap")


def test_a_cpu_bench_of_a_real_onnx_model_has_null_power_fields(tmp_path, write_test_model):
    write_test_model(tmp_path, "affine", max_batch_size=4)
    result = run_bench(BenchSettings(model="affine", model_repository=tmp_path, batch_sizes=(1, 4),
                                     duration_s=0.05, warmup_s=0))
    document = result.to_json()
    assert (document["schema_version"], document["mode"], document["device"]) == (2, "infer", "cpu")
    assert [r["batch_size"] for r in document["results"]] == [1, 4]
    for entry in document["results"]:
        assert entry["images_per_s"] > 0
        assert all(entry[name] is None for name in POWER_FIELDS)


@pytest.mark.gpu
def test_the_real_sampler_on_a_cuda_gpu():
    torch = pytest.importorskip("torch")
    pytest.importorskip("pynvml")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is false)")
    sampler = open_power_sampler("cuda:0")
    if sampler is None:
        pytest.skip("NVML cannot watch cuda:0 here")
    a = torch.randn(4096, 4096, device="cuda")

    def step():
        (a @ a).sum().item()

    try:
        batch = measure(step, 1, 0.2, 1.0, sampler)
    finally:
        sampler.close()
    assert batch.power_samples >= 2
    assert batch.power_w > 0 and math.isfinite(batch.power_w)
    assert batch.energy_j > 0 and batch.images_per_joule == pytest.approx(batch.images / batch.energy_j)
    assert 0 < batch.gpu_utilization <= 1
    assert 0 < batch.sm_clock_mhz["min"] <= batch.sm_clock_mhz["max"] <= batch.max_sm_clock_mhz * 1.01
    assert batch.memory_used_mib > 64  # the two 64 MiB matrices at least
    assert isinstance(batch.throttled, list)
