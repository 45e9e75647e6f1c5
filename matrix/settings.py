"""What one ``ipsbench matrix`` run is asked to do: a frozen settings object whose fields are its options, checked
as a whole when built (``ValueError`` naming the option), before anything is exported, started or loaded."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ipsbench.loadgen.levels import level_list
from ipsbench.loadgen.settings import MAX_CONCURRENCY, host_port, latency_objective
from ipsbench.server.flags import comma_list, duration, option

PRECISIONS = ("fp32", "fp16", "int8")
PRESETS = {"p40": ("alexnet", "googlenet", "resnet50")}
"""The networks of NVIDIA's Tesla P40 inference report."""
LOAD_SCENARIOS = ("sweep", "slo")
MAX_BATCH_SIZE = 1024
MAX_CELLS = 64
"""Networks × precisions one run may hold: each is an export, two benches and a load run."""
MAX_MEASURE_S = 3600.0


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _precisions(text: str) -> tuple[str, ...]:
    import argparse

    chosen = _names(text)
    unknown = [name for name in chosen if name not in PRECISIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--precisions takes a comma-separated list of {', '.join(PRECISIONS)}")
    return chosen


def _weights(text: str) -> tuple[str, Path]:
    """``--weights resnet50=resnet50.pth``."""
    import argparse

    network, sep, path = text.partition("=")
    if not sep or not network.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NETWORK=FILE, got {text!r}")
    return network.strip(), Path(path.strip())


def _objective(text: str) -> str:
    """``--latency-slo`` as the load generator checks it; empty: none."""
    return latency_objective(text) if text.strip() else ""


def _default_out() -> Path:
    return Path("reports") / time.strftime("matrix-%Y%m%d-%H%M%S")


@dataclass(frozen=True)
class MatrixSettings:
    """Networks × precisions → one report: engine images/s per batch size, training beside it, end to end."""

    networks: tuple[str, ...] = option((), "comma-separated torchvision networks, e.g. resnet50,googlenet",
                                       parse=_names)
    preset: str | None = option(None, "p40: AlexNet, GoogLeNet and ResNet-50 (instead of --networks)",
                                choices=tuple(PRESETS))
    precisions: tuple[str, ...] = option(
        PRECISIONS, "precisions to measure; those this machine cannot run are reported as skipped", parse=_precisions)
    batch_sizes: tuple[int, ...] = option((1, 8, 32, 128), "engine batch sizes (the report's columns)",
                                          parse=comma_list(int, "batch size", "1,8,32,128"))
    image_size: int | None = option(None, "square input side (default: each network's own)", bounds=(16, 1024))
    repository: Path = option(Path("models"), "model repository: entries <network>_<precision> are exported "
                              "into it, or reused when their export.json says they were made as asked")
    out: Path = option(default_factory=_default_out, help="report folder (default: reports/matrix-<timestamp>)")
    target: str = option("", "a running server (host:port) to load instead of starting ipsbench-serve per cell; "
                         "it must serve every <network>_<precision> entry", parse=host_port)
    metrics_url: str = option("", "with --target: its Prometheus endpoint (scraped per step)")
    bench_duration_s: float = option(3.0, "engine bench: measured time per batch size", flag="--bench-duration",
                                     parse=duration, bounds=(0.01, MAX_MEASURE_S))
    bench_warmup_s: float = option(1.0, "engine bench: warm-up per batch size", flag="--bench-warmup",
                                   parse=duration, bounds=(0.0, MAX_MEASURE_S))
    train: bool = option(True, "also time training (forward + backward + optimizer step) per batch size")
    load: str = option("sweep", "end to end: sweep the concurrency levels, or slo (search the highest request "
                       "rate meeting --latency-slo)", choices=LOAD_SCENARIOS)
    concurrency: tuple[int, ...] = option((1, 2, 4, 8), "sweep: concurrency levels (1,2,4 or 1:16:x2)",
                                          parse=level_list(int, "concurrency", "1,2,4"))
    duration_s: float = option(4.0, "end to end: measured window per step", flag="--duration", parse=duration,
                               bounds=(0.01, MAX_MEASURE_S))
    warmup_s: float = option(2.0, "end to end: warm-up per step", flag="--warmup", parse=duration,
                             bounds=(0.0, MAX_MEASURE_S))
    max_trials: int = option(4, "sweep: windows per level until they agree", bounds=(1, 100))
    latency_slo: str = option("", "the objective the end-to-end figure must meet, e.g. p99=100ms (the highest "
                              "images/s of a step meeting it is the cell's figure)", parse=_objective)
    calibration_images: Path | None = option(None, "INT8: folder of JPEG/PNG images to calibrate on (default: "
                                             "synthetic images; accuracy then not representative)",
                                             must_be="directory")
    calibration_limit: int = option(256, "INT8: images to calibrate on", bounds=(1, 10_000))
    min_agreement: float | None = option(None, "lowest top-1 agreement with FP32 a lower-precision entry may "
                                         "have; below it the cell fails (default: the exporter's per precision)",
                                         bounds=(0.0, 1.0))
    gpu_cost_per_hour: float | None = option(None, "dollars per hour of the serving box: each cell then shows "
                                             "dollars per million images at its end-to-end rate",
                                             bounds=(0.0, 1e6))
    gpu_watts_idle: float | None = option(None, "watts to count when no power was measured (no NVML), for the "
                                          "kilowatt-hours per million images", bounds=(0.0, 1e5))
    ready_timeout_s: float = option(180.0, "how long a started server may take to load its model",
                                    flag="--ready-timeout", parse=duration, bounds=(1.0, 3600.0))
    weights: tuple[tuple[str, Path], ...] = option(
        (), "NETWORK=FILE: a local state dict for that network (weights_only=True) instead of random weights, so the "
        "agreement figures mean what they would for your model (repeat for several)", parse=_weights, repeat=True)
    seed: int = option(0, "seed of the random weights and inputs")

    def __post_init__(self) -> None:
        if bool(self.networks) == bool(self.preset):
            raise ValueError("give --networks or --preset (one of them)")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or max(self.batch_sizes) > MAX_BATCH_SIZE:
            raise ValueError(f"--batch-sizes must be integers in 1..{MAX_BATCH_SIZE}")
        if len(self.network_names) * len(self.precisions) > MAX_CELLS:
            raise ValueError(f"{len(self.network_names)} networks × {len(self.precisions)} precisions is more "
                             f"than {MAX_CELLS} cells")
        if any(not 1 <= level <= MAX_CONCURRENCY for level in self.concurrency):
            raise ValueError(f"--concurrency levels must be in 1..{MAX_CONCURRENCY}")
        if self.load == "slo" and not self.latency_slo:
            raise ValueError("--load slo searches for the rate meeting an objective: give --latency-slo")
        if self.metrics_url and not self.target:
            raise ValueError("--metrics-url is the --target server's: give --target too (a started server's own "
                             "endpoint is found by itself)")
        unknown = sorted({network for network, _ in self.weights} - set(self.network_names))
        if unknown:
            raise ValueError(f"--weights names {', '.join(unknown)}, which this matrix does not measure")
        missing = [str(path) for _, path in self.weights if not Path(path).is_file()]
        if missing:
            raise ValueError(f"--weights: {', '.join(missing)} is not a file")
        object.__setattr__(self, "repository", Path(self.repository))
        object.__setattr__(self, "out", Path(self.out))

    @property
    def network_names(self) -> tuple[str, ...]:
        return PRESETS[self.preset] if self.preset else tuple(dict.fromkeys(self.networks))

    def weights_for(self, network: str) -> Path | None:
        return next((Path(path) for name, path in self.weights if name == network), None)

    @property
    def sorted_batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.batch_sizes)))
