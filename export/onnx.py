"""PyTorch model → ONNX file with a dynamic batch axis."""
from __future__ import annotations

from pathlib import Path

OPSET = 18
"""The one place the ONNX opset is chosen."""
INPUT_NAME = "input"
OUTPUT_NAME = "output"
MAX_DYNAMIC_BATCH = 4096


def export_onnx(model, crop_size: int, path: Path) -> Path:
    """Export through torch.export (the current exporter), batch dimension symbolic, weights inside the file."""
    import torch

    example = torch.randn(2, 3, crop_size, crop_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        model,
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
