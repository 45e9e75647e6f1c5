"""What one export is asked to do: a frozen settings object whose fields are ``ipsbench-export``'s options.

Checked as a whole when built (:class:`ExportSettings` raises ``ValueError`` naming the option), with the defaults
that depend on other options (the device, channels-last) resolved there, so every export of a preset is one
settings object and the library never reads an ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ipsbench.export.quantize import MAX_CALIBRATION_IMAGES
from ipsbench.server.flags import check_bounds, option
from ipsbench.server.preprocess.recipe import FRONT_KINDS, PREPROCESS_DEVICES

FORMATS = ("onnx", "torchscript", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("cpu", "gpu")
NOT_SIMULATED = ("format", "device", "precision", "channels_last", "cuda_graphs", "max_batch_size", "opt_batch_size",
                 "calibration_images", "verify_images", "weights", "front", "min_agreement", "triton_fronts")
"""Options of a network's export that ``--simulate`` (which exports none) refuses when given."""


def front_kinds(text: str) -> tuple[str, ...]:
    """``--front jpeg,uint8``."""
    kinds = tuple(kind.strip() for kind in text.split(",") if kind.strip())
    unknown = [kind for kind in kinds if kind not in FRONT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"--front takes a comma-separated list of {', '.join(FRONT_KINDS)}")
    return kinds


@dataclass(frozen=True)
class ExportSettings:
    """One network → one verified repository entry (and its fronts)."""

    model: str = option("", "torchvision model name, e.g. resnet50 (see --list)", positional=True)
    out: Path = option(Path("models"), "model repository folder")
    name: str = option("", "name in the repository (default: the model name)")
    version: int = option(1, "version folder to write")
    format: str = option("onnx", "artifact to write", choices=FORMATS)
    device: str | None = option(
        None, "instance_group kind: KIND_CPU or KIND_GPU (default: cpu; gpu for --format tensorrt)", choices=DEVICES
    )
    precision: str = option(
        "fp32", "engine precision: fp16 for ONNX, TorchScript (--device gpu) and TensorRT; int8 (a QDQ graph from "
        "static calibration) for ONNX and TensorRT", choices=PRECISIONS,
    )
    channels_last: bool | None = option(
        None, "TorchScript: NHWC memory format in the engine (default: on for --device gpu, off for cpu)"
    )
    cuda_graphs: bool = option(False, "TorchScript on GPU: replay CUDA graphs per batch-size bucket")
    max_batch_size: int = option(64, "config max_batch_size")
    opt_batch_size: int | None = option(None, "TensorRT: batch size the kernels are tuned for (default: the maximum)")
    workspace_gib: float = option(4.0, "TensorRT: builder workspace in GiB")
    calibration_images: Path | None = option(
        None, "INT8: folder of JPEG/PNG images to calibrate on (default: synthetic images, whose accuracy is not "
        "representative); when --verify-images is the same folder or not given, agreement is checked on the "
        "folder's other images",
    )
    calibration_limit: int = option(256, "INT8: images to calibrate on (the first in name order)",
                                    bounds=(1, MAX_CALIBRATION_IMAGES))
    min_agreement: float | None = option(
        None, "lowest top-1 agreement with FP32 on the image set an artifact may have (default: 100% for fp32, "
        "90% for fp16, 80% for int8); below it the export fails", bounds=(0.0, 1.0),
    )
    verify_images: Path | None = option(
        None, "folder of JPEG/PNG images for the top-1 agreement check (default: synthetic images)"
    )
    verify_image_count: int = option(16, "images in the top-1 agreement check (0 skips it)")
    instance_count: int = option(1, "instance_group count")
    image_size: int | None = option(
        None, "square input side; default is the network's own (224, 299 for inception_v3)"
    )
    front: tuple[str, ...] = option(
        (), "also write preprocessing fronts so the model takes encoded images or raw pixels: jpeg, uint8 or both "
        "(comma-separated)", parse=front_kinds,
    )
    simulate: Path | None = option(
        None, "write no network: a device-time model entry (<model>_simulated, served by the ipsbench_device_model "
        "backend) with the network's inputs and outputs, whose batches take the time this profile (ipsbench-serve "
        "bench --json output from a real GPU) measured; max_batch_size is the profile's largest batch",
        metavar="PROFILE",
    )
    preprocess_device: str = option(
        "auto", "where the server preprocesses a front's images (ipsbench.preprocess.device): auto (the GPU when "
        "CUDA is present and the engine runs on a CUDA device), cpu or gpu", choices=PREPROCESS_DEVICES,
    )
    seed: int = option(0, "seed for the random weights")
    weights: str = option("", "local state-dict file to load (weights_only=True) instead of random weights")
    triton_fronts: Path | None = option(
        None, "also write Triton's equivalent of each --front into this folder: a Python-backend preprocessing model "
        "and an ensemble named like the front, beside a copy of the classifier", metavar="DIR",
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        self._check_ranges()
        self._check_simulate_options()
        self._check_format_options()
        self._check_triton_fronts()
        device = self.device or ("gpu" if self.format == "tensorrt" else "cpu")
        object.__setattr__(self, "device", device)
        if self.format == "torchscript" and self.channels_last is None:
            object.__setattr__(self, "channels_last", device == "gpu")
        object.__setattr__(self, "out", Path(self.out))

    def _check_ranges(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("--max-batch-size must be at least 1")
        if self.verify_image_count < 0:
            raise ValueError("--verify-image-count must be >= 0")
        if self.opt_batch_size is not None and not 1 <= self.opt_batch_size <= self.max_batch_size:
            raise ValueError("--opt-batch-size must be between 1 and --max-batch-size")
        if self.version < 1:
            raise ValueError("--version must be at least 1")
        if self.instance_count < 1:
            raise ValueError("--instance-count must be at least 1")
        if self.preprocess_device != "auto" and not self.front:
            raise ValueError("--preprocess-device applies to the fronts --front writes: give --front too")

    def _check_triton_fronts(self) -> None:
        if self.triton_fronts is not None and not self.front:
            raise ValueError("--triton-fronts writes Triton's equivalent of the fronts --front writes: give --front too")
        if self.triton_fronts is not None and Path(self.triton_fronts).resolve() == Path(self.out).resolve():
            raise ValueError("--triton-fronts needs a folder of its own, not --out: Triton's <name>_<kind> entries "
                             "differ from ipsbench's of the same names")

    def _check_simulate_options(self) -> None:
        """``--simulate`` writes a config and the profile: the options of a network's export do not apply."""
        if self.simulate is None:
            return
        given = [field.name for field in dataclasses.fields(self)
                 if field.name in NOT_SIMULATED and getattr(self, field.name) != field.default]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"--simulate exports no network, so {flags} cannot apply")

    def _check_format_options(self) -> None:
        if self.format != "torchscript":
            for flag, given in {"--channels-last": self.channels_last is not None, "--cuda-graphs": self.cuda_graphs}.items():
                if given:
                    raise ValueError(f"{flag} applies to --format torchscript only")
        if self.precision == "int8" and self.format == "torchscript":
            raise ValueError("--precision int8 needs --format onnx or tensorrt (a QDQ graph)")
        if self.calibration_images is not None and self.precision != "int8":
            raise ValueError("--calibration-images applies to --precision int8 only")
        if self.format == "tensorrt" and self.device == "cpu":
            raise ValueError("--format tensorrt builds a GPU engine: --device cpu does not apply")
        if self.format == "torchscript" and (self.device or "cpu") == "cpu":
            if self.precision == "fp16":
                raise ValueError("--precision fp16 needs --device gpu")
            if self.cuda_graphs:
                raise ValueError("--cuda-graphs needs --device gpu")

    @property
    def entry_name(self) -> str:
        """The model's name in the repository (``<model>_simulated`` for ``--simulate``)."""
        return self.name or (f"{self.model}_simulated" if self.simulate is not None else self.model)

    def variant(self, model: str, name: str, precision: str, format: str, device: str) -> ExportSettings:  # noqa: A002
        """These settings for another network, entry name, precision and format (a preset's exports), the shared
        options kept; the format's own defaults apply."""
        on_gpu_torchscript = format == "torchscript" and device == "gpu"
        return dataclasses.replace(
            self, model=model, name=name, precision=precision, format=format, device=device,
            channels_last=on_gpu_torchscript or None, cuda_graphs=on_gpu_torchscript,
        )
