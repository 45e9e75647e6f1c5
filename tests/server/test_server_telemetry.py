"""GPU telemetry: Triton's ``nv_gpu_*`` series from NVML, and none (without error) where there is no GPU."""

from __future__ import annotations

import types

import pytest
from prometheus_client import CollectorRegistry
from server_helpers import scrape

from ipsbench.server.metrics import render
from ipsbench.server.telemetry import open_gpu_collector

GPU_SERIES = ("nv_gpu_", "nv_energy_consumption")


class FakeNVMLError(Exception):
    pass


def fake_nvml(devices: dict[str, dict], fail_init: bool = False) -> types.SimpleNamespace:
    """A stand-in for the ``pynvml`` module: ``devices`` maps a UUID to its readings in NVML's own units
    (percent, mW, mJ, bytes); a reading that is missing raises NVMLError, as an unsupported one does."""
    uuids = list(devices)
    state = {"shutdown": 0}

    def reading(key):
        def read(handle):
            value = devices[handle].get(key)
            if value is None:
                raise FakeNVMLError(f"{key}: Not Supported")
            return value
        return read

    def init():
        if fail_init:
            raise FakeNVMLError("Driver Not Loaded")

    def shutdown():
        state["shutdown"] += 1

    return types.SimpleNamespace(
        NVMLError=FakeNVMLError,
        state=state,
        nvmlInit=init,
        nvmlShutdown=shutdown,
        nvmlDeviceGetCount=lambda: len(uuids),
        nvmlDeviceGetHandleByIndex=lambda index: uuids[index],
        nvmlDeviceGetUUID=lambda handle: handle.encode(),  # older nvidia-ml-py versions return bytes
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=reading("util_pct")(handle), memory=0),
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(
            total=reading("mem_total")(handle), used=reading("mem_used")(handle), free=0
        ),
        nvmlDeviceGetPowerUsage=reading("power_mw"),
        nvmlDeviceGetPowerManagementLimit=reading("limit_mw"),
        nvmlDeviceGetTotalEnergyConsumption=reading("energy_mj"),
    )


def render_text(collector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return render(registry).decode()


def rendered_samples(collector) -> dict[tuple[str, str], float]:
    samples = {}
    for line in render_text(collector).splitlines():
        if line.startswith("#"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, labels = name_labels.rstrip("}").split("{")
        samples[(name, labels)] = float(value)
    return samples


def test_gpu_series_have_tritons_names_units_and_labels():
    nvml = fake_nvml({
        "GPU-aaa": {"util_pct": 87, "mem_total": 80 * 2**30, "mem_used": 3 * 2**30, "power_mw": 250_500,
                    "limit_mw": 700_000, "energy_mj": 123_456_789},
        "GPU-bbb": {"util_pct": 0, "mem_total": 16 * 2**30, "mem_used": 0, "power_mw": 30_000, "limit_mw": 70_000},
    })
    collector = open_gpu_collector(nvml)
    assert collector is not None and collector.gpu_count == 2
    samples = rendered_samples(collector)
    a, b = 'gpu_uuid="GPU-aaa"', 'gpu_uuid="GPU-bbb"'
    assert samples == {
        ("nv_gpu_utilization", a): 0.87, ("nv_gpu_utilization", b): 0.0,
        ("nv_gpu_memory_total_bytes", a): 80 * 2**30, ("nv_gpu_memory_total_bytes", b): 16 * 2**30,
        ("nv_gpu_memory_used_bytes", a): 3 * 2**30, ("nv_gpu_memory_used_bytes", b): 0.0,
        ("nv_gpu_power_usage", a): 250.5, ("nv_gpu_power_usage", b): 30.0,
        ("nv_gpu_power_limit", a): 700.0, ("nv_gpu_power_limit", b): 70.0,
        ("nv_energy_consumption", a): 123_456.789,  # the second GPU does not support it: left out, no error
    }
    text = render_text(collector)
    assert "# TYPE nv_energy_consumption counter" in text and "# TYPE nv_gpu_power_usage gauge" in text
    collector.close()
    assert nvml.state["shutdown"] == 1


def test_values_are_read_at_scrape_time():
    readings = {"GPU-aaa": {"util_pct": 10, "mem_total": 1, "mem_used": 1, "power_mw": 1000, "limit_mw": 1000,
                            "energy_mj": 5000}}
    collector = open_gpu_collector(fake_nvml(readings))
    first = rendered_samples(collector)[("nv_energy_consumption", 'gpu_uuid="GPU-aaa"')]
    readings["GPU-aaa"]["energy_mj"] = 9000
    readings["GPU-aaa"]["util_pct"] = 55
    samples = rendered_samples(collector)
    assert (first, samples[("nv_energy_consumption", 'gpu_uuid="GPU-aaa"')]) == (5.0, 9.0)
    assert samples[("nv_gpu_utilization", 'gpu_uuid="GPU-aaa"')] == 0.55


@pytest.mark.parametrize(("nvml", "reason"), [
    (fake_nvml({}, fail_init=True), "NVML did not start"),
    (fake_nvml({}), "NVML sees no GPU"),
])
def test_no_driver_or_no_gpu_means_no_collector_and_one_info_line(nvml, reason, caplog):
    caplog.set_level("INFO", logger="ipsbench.server.telemetry")
    assert open_gpu_collector(nvml) is None
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert reason in caplog.records[0].getMessage()


def test_a_server_without_a_gpu_starts_and_serves_no_gpu_series(server):
    probe = open_gpu_collector()
    if probe is not None:
        probe.close()
        pytest.skip("NVML sees a GPU here; the GPU series are checked by the GPU check script")
    samples = scrape(server.metrics_url)
    assert any(name == "nv_inference_count" for name, _ in samples)
    assert not [name for name, _ in samples if name.startswith(GPU_SERIES)]
    assert "no GPU telemetry" in server.log()
