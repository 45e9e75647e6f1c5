"""PyTorch model → ONNX file with a dynamic batch axis, in FP32 or FP16.

FP16 is exported from the model converted with ``.half()`` inside a wrapper that casts its FP32 input to FP16 and its
FP16 output back to FP32: the weights and arithmetic are FP16, while the wire types stay FP32, so the same config,
clients and load generator serve both precisions. INT8 is the FP32 graph quantized by :mod:`ipsbench.export.quantize`. ONNX Runtime's CPU provider runs the FP16 graph correctly (casting
around operators it has no FP16 kernel for); GPU providers run it in FP16 natively.
"""
from __future__ import annotations

from pathlib import Path

OPSET = 18
"""The one place the ONNX opset is chosen."""
INPUT_NAME = "input"
OUTPUT_NAME = "output"
MAX_DYNAMIC_BATCH = 4096
PRECISIONS = ("fp32", "fp16")


def half_precision(model):
    """``model`` in FP16 behind FP32 input and output."""
    import torch

    class HalfPrecision(torch.nn.Module):
        def __init__(self, network: torch.nn.Module) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.network(x.half()).float()

    import copy

    return HalfPrecision(copy.deepcopy(model).half()).eval()


def export_onnx(model, crop_size: int, path: Path, precision: str = "fp32") -> Path:
    """Export through torch.export (the current exporter), batch dimension symbolic, weights inside the file."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"ONNX export supports {', '.join(PRECISIONS)}, not {precision}")
    network = half_precision(model) if precision == "fp16" else model
    example = torch.randn(2, 3, crop_size, crop_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        network,
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    program.save(str(path), external_data=False)
    return path
