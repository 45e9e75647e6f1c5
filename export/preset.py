"""Presets: sets of exports written by one command. ``p40``: the networks of NVIDIA's Tesla P40 inference report
(AlexNet, GoogLeNet, ResNet-50) at every precision this machine can build.

Names are ``<model>_<precision>``: ``_fp32`` is the ONNX model (ONNX Runtime, any machine); ``_fp16`` the TensorRT
engine where TensorRT is installed, else TorchScript in FP16 on CUDA; ``_int8`` the TensorRT INT8 engine.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ipsbench.export.settings import ExportSettings

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
    return cuda, ort_cuda, cuda and importlib.util.find_spec("tensorrt") is not None


def variants(preset: str, cuda: bool, tensorrt: bool, ort_cuda: bool = False) -> list[Variant]:
    """The exports of ``preset`` on a machine with these capabilities; FP32 ONNX runs on the GPU only where
    ONNX Runtime has its CUDA provider."""
    chosen = []
    for model in PRESETS[preset]:
        chosen.append(Variant(model, "fp32", "onnx", "gpu" if ort_cuda else "cpu"))
        if tensorrt:
            chosen.append(Variant(model, "fp16", "tensorrt", "gpu"))
            chosen.append(Variant(model, "int8", "tensorrt", "gpu"))
        elif cuda:
            chosen.append(Variant(model, "fp16", "torchscript", "gpu"))
    return chosen


def settings_for(settings: ExportSettings, variant: Variant) -> ExportSettings:
    """The single-export settings of one variant, the user's shared options kept."""
    return settings.variant(variant.model, variant.name, variant.precision, variant.format, variant.device)
