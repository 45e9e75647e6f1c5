"""The cells of a matrix — network × precision, each with the format and device that run it on this machine — and
how long what is left should take."""

from __future__ import annotations

from dataclasses import dataclass

from ipsbench.matrix.settings import MatrixSettings


@dataclass(frozen=True)
class Capabilities:
    cuda: bool
    """PyTorch sees a CUDA device."""
    ort_cuda: bool
    """ONNX Runtime has its CUDA provider."""
    tensorrt: bool

    def describe(self) -> str:
        return (f"CUDA {'yes' if self.cuda else 'no'}, ONNX Runtime CUDA {'yes' if self.ort_cuda else 'no'}, "
                f"TensorRT {'yes' if self.tensorrt else 'no'}")


def detect_capabilities() -> Capabilities:
    from ipsbench.export import preset

    cuda, ort_cuda, tensorrt = preset.capabilities()
    return Capabilities(cuda, ort_cuda, tensorrt)


def engine_for(precision: str, caps: Capabilities) -> tuple[str, str]:
    """(format, device) that runs ``precision`` here: the exporter's own choice for its presets."""
    from ipsbench.export import preset

    return preset.engine_for(precision, caps.cuda, caps.tensorrt, caps.ort_cuda)


@dataclass(frozen=True)
class Cell:
    network: str
    precision: str
    format: str  # noqa: A003 - the exporter's word
    device: str

    @property
    def entry(self) -> str:
        """The model's name in the repository and on the server."""
        return f"{self.network}_{self.precision}"

    @property
    def label(self) -> str:
        return f"{self.network} {self.precision}"


def plan_cells(settings: MatrixSettings, caps: Capabilities) -> list[Cell]:
    """Every network × precision asked for, in that order (a network's precisions together)."""
    return [Cell(network, precision, *engine_for(precision, caps))
            for network in settings.network_names for precision in settings.precisions]


def trains(cell: Cell, caps: Capabilities) -> bool:
    """Whether a cell gets a training row: FP32 always; FP16 as mixed precision on CUDA. (INT8 is an inference
    precision, and on a CPU every training step is FP32, so its FP32 row says it once.)"""
    return cell.precision == "fp32" or (cell.precision == "fp16" and caps.cuda and cell.device == "gpu")


EXPORT_GUESS_S = 30.0
SERVER_START_GUESS_S = 5.0
TRIALS_GUESS = 3
SLO_STEPS_GUESS = 6


def planned_seconds(cell: Cell, settings: MatrixSettings, caps: Capabilities) -> float:
    """What a cell should take by its settings (an export's time is a guess until one has been measured)."""
    bench = len(settings.batch_sizes) * (settings.bench_warmup_s + settings.bench_duration_s) + 5.0
    train = bench if settings.train and trains(cell, caps) else 0.0
    steps = len(settings.concurrency) * TRIALS_GUESS if settings.load == "sweep" else SLO_STEPS_GUESS
    load = steps * settings.duration_s + (len(settings.concurrency) if settings.load == "sweep" else steps) * (
        settings.warmup_s) + 5.0
    start = 0.0 if settings.target else SERVER_START_GUESS_S
    return EXPORT_GUESS_S + bench + train + start + load


class Estimate:
    """Time left: the remaining cells' planned time, scaled by how the finished cells compared with theirs."""

    def __init__(self, planned: list[float]) -> None:
        self._planned = planned
        self._spent = 0.0
        self._planned_done = 0.0
        self.done = 0

    def finished(self, index: int, seconds: float) -> None:
        self._spent += seconds
        self._planned_done += self._planned[index]
        self.done += 1

    def left_s(self, running: int, running_for_s: float = 0.0) -> float:
        scale = self._spent / self._planned_done if self._planned_done else 1.0
        remaining = sum(self._planned[running:]) * scale
        return max(0.0, remaining - running_for_s)
