"""Presets: sets of exports written by one command. ``p40``: the networks of NVIDIA's Tesla P40 inference report
(AlexNet, GoogLeNet, ResNet-50) at every precision this machine can build.

Names are ``<model>_<precision>``; :func:`engine_for` picks each one's format and device.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ipsbench.export.settings import PRECISIONS, ExportSettings

PRESETS = {"p40": ("alexnet", "googlenet", "resnet50")}


@dataclass(frozen=True)
class Variant:
    model: str
    precision: str
    format: str
    device: str

    @property
    def name(self) -> str:
        return f"{self.model}_{self.precision}"


def capabilities() -> tuple[bool, bool, bool]:
    """(CUDA usable by PyTorch, ONNX Runtime's CUDA provider installed, TensorRT importable)."""
    import onnxruntime
    import torch

    cuda = torch.cuda.is_available()
    ort_cuda = cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return cuda, ort_cuda, cuda and importlib.util.find_spec("tensorrt") is not None and _tensorrt_usable()


def _tensorrt_usable() -> bool:
    """TensorRT 11 with its CUDA runtime bindings (an older TensorRT is refused by the build, so not chosen)."""
    from ipsbench.server.engines.tensorrt_engine import TensorRTUnavailable, import_runtime

    try:
        import_runtime()
    except TensorRTUnavailable:
        return False
    return True


def engine_for(precision: str, cuda: bool, tensorrt: bool, ort_cuda: bool = False) -> tuple[str, str]:
    """(format, device) that runs ``precision`` best on a machine with these capabilities: FP32 as ONNX (on the GPU
    where ONNX Runtime has its CUDA provider, else TorchScript on CUDA), FP16 and INT8 as TensorRT engines where
    TensorRT is; without it FP16 as TorchScript on CUDA and INT8 as the QDQ ONNX model on the CPU; on a CPU-only box
    ONNX Runtime runs all three."""
    if precision == "fp32":
        return ("onnx", "gpu") if ort_cuda else ("torchscript", "gpu") if cuda else ("onnx", "cpu")
    if tensorrt:
        return "tensorrt", "gpu"
    if precision == "fp16" and cuda:
        return "torchscript", "gpu"
    return "onnx", "cpu"


def variants(preset: str, cuda: bool, tensorrt: bool, ort_cuda: bool = False) -> list[Variant]:
    """The exports of ``preset`` on a machine with these capabilities: each network at each precision."""
    return [Variant(model, precision, *engine_for(precision, cuda, tensorrt, ort_cuda))
            for model in PRESETS[preset] for precision in PRECISIONS]


def settings_for(settings: ExportSettings, variant: Variant) -> ExportSettings:
    """The single-export settings of one variant, the user's shared options kept."""
    return settings.variant(variant.model, variant.name, variant.precision, variant.format, variant.device)
