"""``ipsbench-serve bench``: in-process engine throughput per batch size, the number vendor sheets quote.

The model is loaded by the code the server uses (repository scan, loader with its warm-up, backend), as one engine
instance, without gRPC or the batcher. For each batch size one random input batch is run over and over, first for
the warm-up time, then for the measured time; every call of the instance's ``run`` is timed with
``time.perf_counter_ns``, so the host→device copy, the compute and the device→host copy are included, exactly as
the server pays them per batch. ``--mode train`` times a training step of the entry's PyTorch network instead
(:mod:`ipsbench.server.bench_train`). On a GPU, NVML is sampled during each timed loop
(:mod:`ipsbench.server.bench_power`): power, energy per image, utilization, SM clocks.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from ipsbench.server.backends.base import ModelInstance
from ipsbench.server.bench_power import PowerReading, PowerSampler, open_power_sampler
from ipsbench.server.flags import comma_list, duration, option
from ipsbench.server.backends.device_profile import simulated_label
from ipsbench.server.backends.registry import get_backend
from ipsbench.server.loader import load_instance, warmup_batches
from ipsbench.server.model_spec import ModelSpec
from ipsbench.server.preprocess.recipe import is_preprocess_parameter
from ipsbench.server.repository.scan import ModelLoadError, load_model_source

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""2: the power fields of each batch size, ``mode`` and ``measures``."""
PERCENTILES = (50, 90, 99)
MAX_BATCH_SIZE = 4096
"""The largest batch size the bench accepts, refused before any input is allocated."""
MODES = ("infer", "train")
MEASURES = {
    "infer": "forward pass of the served engine, per batch (host-to-device and device-to-host copies included): "
    "inference images/s",
    "train": "forward + backward + SGD step of the PyTorch network, per batch: training images/s",
}
"""What a figure of each mode means, in one sentence (the console header and the JSON's ``measures``)."""


@dataclass(frozen=True)
class BenchSettings:
    """What ``ipsbench-serve bench`` measures; the fields are its options."""

    model: str = option(help="model name in the repository", positional=True, required=True)
    model_repository: Path = option(help="model repository in Triton's layout")
    version: int | None = option(None, "model version (default: the newest served)")
    batch_sizes: tuple[int, ...] = option(
        (1, 8, 32, 64), "comma-separated batch sizes, capped at the model's max_batch_size",
        parse=comma_list(int, "batch size", "1,8,32,64"),
    )
    duration_s: float = option(5.0, "measured time per batch size", flag="--duration", parse=duration)
    warmup_s: float = option(1.0, "untimed runs per batch size", flag="--warmup", parse=duration)
    seed: int = option(0, "seed of the random inputs (and of the trained network's weights)")
    mode: str = option(
        "infer", "infer: the served engine's forward pass; train: forward + backward + SGD step of the entry's "
        "torchvision network in PyTorch, on the entry's device", choices=MODES,
    )
    network: str | None = option(
        None, "--mode train: the torchvision network to train (default: the entry's ipsbench.network parameter)"
    )

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1 or max(self.batch_sizes) > MAX_BATCH_SIZE:
            raise ValueError(f"batch sizes must be integers in 1..{MAX_BATCH_SIZE}, got {list(self.batch_sizes)}")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise ValueError("--duration must be > 0 and --warmup >= 0")
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.network is not None and self.mode != "train":
            raise ValueError("--network names the network to train: it needs --mode train")


@dataclass
class BatchSizeResult:
    batch_size: int
    batches: int
    images: int
    elapsed_s: float
    images_per_s: float
    latency_ms: dict[str, float]
    """``p50``, ``p90``, ``p99``, ``mean``, ``min``, ``max`` of one ``run`` call (one training step in train mode)."""
    # NVML over the timed loop (ipsbench.server.bench_power); None where not measured (CPU, no NVML).
    power_w: float | None = None
    """Mean power of the whole GPU over the loop."""
    energy_j: float | None = None
    """Energy over the loop: NVML's energy counter's difference where it works, else mean power × elapsed."""
    energy_source: str | None = None
    """``counter`` or ``sampled_power``: which of the two ``energy_j`` is."""
    images_per_joule: float | None = None
    """Images per joule: images/s per watt."""
    joules_per_image: float | None = None
    gpu_utilization: float | None = None
    """Mean GPU utilization, a fraction 0..1 (as the server's ``nv_gpu_utilization``)."""
    sm_clock_mhz: dict[str, float] | None = None
    """``mean``, ``min``, ``max`` of the sampled SM clock."""
    max_sm_clock_mhz: float | None = None
    """The SM clock's maximum: a mean well below it means the loop ran held back."""
    memory_used_mib: float | None = None
    """The most device memory in use in any sample (the whole device's)."""
    power_samples: int | None = None
    throttled: list[str] | None = None
    """NVML's reasons for holding the clocks down seen in any sample (``sw_power_cap``, ``hw_thermal_slowdown``,
    ...); empty when none was."""
    final_loss: float | None = None
    """Train mode: the cross-entropy of the last timed step (finite: the steps trained without diverging)."""

    def add_power(self, reading: PowerReading) -> None:
        self.power_w = reading.power_w
        self.energy_j = reading.energy_j
        self.energy_source = reading.energy_source
        if reading.energy_j:
            self.images_per_joule = self.images / reading.energy_j
            self.joules_per_image = reading.energy_j / self.images
        self.gpu_utilization = reading.gpu_utilization
        self.sm_clock_mhz = reading.sm_clock_mhz
        self.max_sm_clock_mhz = reading.max_sm_clock_mhz
        self.memory_used_mib = reading.memory_used_mib
        self.power_samples = reading.power_samples
        self.throttled = reading.throttled


@dataclass
class BenchResult:
    model: str
    version: int
    platform: str
    backend: str
    device: str
    device_name: str
    precision: str
    parameters: dict[str, str]
    input_shapes: dict[str, list[int]]
    duration_s: float
    warmup_s: float
    instances: int = 1
    results: list[BatchSizeResult] = field(default_factory=list)
    host: str = field(default_factory=socket.gethostname)
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    software: dict[str, str] = field(default_factory=dict)
    simulated: str | None = None
    """``SIMULATED (device-time model from <device>)`` when no device computed (the ``ipsbench_device_model``
    backend replays a profile); None for a real engine."""
    mode: str = "infer"
    measures: str = MEASURES["infer"]
    """What each batch size's figures time, in one sentence."""
    network: str | None = None
    """Train mode: the torchvision network trained."""
    note: str | None = None
    """Train mode: why the training precision differs from the entry's, where it does."""

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "kind": "engine_bench", **asdict(self)}


def open_instance(settings: BenchSettings) -> tuple[ModelSpec, int, ModelInstance]:
    """Load and warm one instance of the model, as the server would."""
    spec, version, model_path = find_entry(settings)
    instance = load_instance(
        get_backend(spec.backend), spec, version, model_path, spec.instances[0], warmup_batches(spec)
    )
    return spec, version, instance


def find_entry(settings: BenchSettings) -> tuple[ModelSpec, int, Path]:
    """The model's validated spec, the version to bench and its model file, read as the server reads them."""
    root = Path(os.path.realpath(settings.model_repository))
    if not root.is_dir():
        raise FileNotFoundError(f"model repository '{settings.model_repository}' is not a directory")
    try:
        source = load_model_source(root, settings.model)
    except ModelLoadError as exc:
        raise ValueError(exc.message) from None
    versions = source.version_files
    version = max(versions) if settings.version is None else settings.version
    if version not in versions:
        raise ValueError(f"model '{settings.model}' has no version {version}; it serves {sorted(versions)}")
    return source.spec, version, versions[version]


def effective_batch_sizes(spec: ModelSpec, requested: tuple[int, ...]) -> list[int]:
    """Requested sizes capped at ``max_batch_size``, sorted, without repeats; ``[1]`` for a model without batching."""
    if not spec.batched:
        return [1]
    capped = sorted({min(size, spec.max_batch_size) for size in requested})
    if capped != sorted(set(requested)):
        log.info("batch sizes capped at max_batch_size %d: %s", spec.max_batch_size, capped)
    return capped


def batch_inputs(spec: ModelSpec, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs of ``batch_size`` samples (uniform in [0, 1) for floats, small integers otherwise)."""
    arrays = {}
    for name, tensor in spec.inputs.items():
        if not tensor.fixed:
            raise ValueError(f"input '{name}' has variable dims {list(tensor.dims)}; bench needs fixed dims")
        shape = ((batch_size,) if spec.batched else ()) + tensor.dims
        dtype = tensor.datatype.numpy
        if np.issubdtype(dtype, np.floating):
            arrays[name] = rng.random(shape, dtype=np.float32).astype(dtype, copy=False)
        elif np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            arrays[name] = rng.integers(0, 2 if dtype == np.bool_ else 100, shape).astype(dtype)
        else:
            raise ValueError(f"input '{name}': bench cannot generate {tensor.datatype.protocol} data")
    return arrays


def measure(
    step: Callable[[], object],
    batch_size: int,
    warmup_s: float,
    duration_s: float,
    sampler: PowerSampler | None = None,
) -> BatchSizeResult:
    """Call ``step`` (one batch) for ``warmup_s`` untimed, then for ``duration_s`` (at least once), timing every call;
    with a ``sampler``, NVML is sampled over the timed calls."""
    warm_until = time.perf_counter_ns() + int(warmup_s * 1e9)
    while time.perf_counter_ns() < warm_until:
        step()
    latencies_ns: list[int] = []
    with (sampler.window() if sampler is not None else nullcontext()) as reading:
        started = time.perf_counter_ns()
        deadline = started + int(duration_s * 1e9)
        finished = started
        while finished < deadline or not latencies_ns:
            before = time.perf_counter_ns()
            step()
            finished = time.perf_counter_ns()
            latencies_ns.append(finished - before)
    elapsed_s = (finished - started) / 1e9
    latency_ms = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    stats = {f"p{q}": float(np.percentile(latency_ms, q)) for q in PERCENTILES}
    stats.update(mean=float(latency_ms.mean()), min=float(latency_ms.min()), max=float(latency_ms.max()))
    images = batch_size * len(latencies_ns)
    result = BatchSizeResult(batch_size, len(latencies_ns), images, elapsed_s, images / elapsed_s, stats)
    if reading is not None:
        result.add_power(reading)
    return result


def run_bench(settings: BenchSettings, on_result=None) -> BenchResult:
    """Measure the engine's forward pass at every batch size; ``on_result(result, batch)`` is called as each batch
    size finishes. (``--mode train`` is :func:`ipsbench.server.bench_train.run_train_bench`.)"""
    spec, version, instance = open_instance(settings)
    # A preprocessing front is benchmarked as its engine: the preprocessed tensor in, decoding excluded.
    engine = spec.engine_spec()
    try:
        info = instance.info
        result = BenchResult(
            model=spec.name,
            version=version,
            platform=spec.platform,
            backend=spec.backend,
            device=info.device,
            device_name=info.simulated_from or device_name(info.device),
            precision=info.precision,
            parameters=engine_parameters(spec),
            input_shapes={name: list(tensor.metadata_shape) for name, tensor in engine.inputs.items()},
            duration_s=settings.duration_s,
            warmup_s=settings.warmup_s,
            software=software_versions(),
            simulated=simulated_label(info.simulated_from) if info.simulated_from else None,
        )
        rng = np.random.default_rng(settings.seed)

        def engine_call(batch_size: int) -> Callable[[], object]:
            arrays = batch_inputs(engine, batch_size, rng)
            return lambda: instance.run(arrays, engine.output_names)

        # A simulated device computes nothing: no power of its own to sample.
        sampler = None if info.simulated_from else open_power_sampler(info.device)
        measure_batch_sizes(result, effective_batch_sizes(spec, settings.batch_sizes), engine_call, settings,
                            sampler, on_result)
        return result
    finally:
        instance.close()


def measure_batch_sizes(
    result: BenchResult,
    batch_sizes: list[int],
    step_for: Callable[[int], Callable[[], object]],
    settings: BenchSettings,
    sampler: PowerSampler | None,
    on_result=None,
) -> None:
    """Time ``step_for(batch_size)`` at each batch size into ``result.results``; closes ``sampler`` at the end."""
    try:
        for batch_size in batch_sizes:
            batch = measure(step_for(batch_size), batch_size, settings.warmup_s, settings.duration_s, sampler)
            result.results.append(batch)
            if on_result is not None:
                on_result(result, batch)
    finally:
        if sampler is not None:
            sampler.close()


def engine_parameters(spec: ModelSpec) -> dict[str, str]:
    """The entry's own parameters: the bench times the engine, never the preprocessing recipe."""
    return {
        key: value.string_value for key, value in spec.config.parameters.items() if not is_preprocess_parameter(key)
    }


def device_name(device: str) -> str:
    """A GPU's product name (PyTorch if loaded, else NVML), or the CPU model."""
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            return torch.cuda.get_device_name(index)
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            finally:
                pynvml.nvmlShutdown()
            return name.decode() if isinstance(name, bytes) else name
        except Exception:  # noqa: BLE001 - NVML absent or failing: the name is informational
            return f"CUDA device {index}"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return f"{line.partition(':')[2].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("ipsbench", "torch", "onnxruntime", "numpy"):
        if package == "ipsbench" or package in sys.modules:
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                continue
    torch = sys.modules.get("torch")
    if torch is not None and torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    return versions
