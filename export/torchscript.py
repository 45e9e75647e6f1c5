"""PyTorch model → TorchScript ``model.pt`` (traced), the file Triton's PyTorch backend and ipsbench-serve load.

The model is traced on the CPU with an example batch from the export seed, and the trace is checked by re-running
it (``check_trace``). FP16 is traced from the model in FP16 behind FP32 input and output casts, so the file itself
computes in FP16 wherever it is loaded (Triton's libtorch backend too), with the same FP32 wire types as FP32. It is not frozen here: freezing turns the weights into constants, which the server
could then no longer move to the GPU or convert to FP16; the server freezes after it has done both. A SHA-256
manifest (``model.pt.sha256``) is written next to the file, since the server refuses TorchScript without one.
"""
from __future__ import annotations

import os
from pathlib import Path

from ipsbench.server.repository.layout import MODEL_FILENAMES

INPUT_NAME = "INPUT__0"
OUTPUT_NAME = "OUTPUT__0"
"""Triton's names for a libtorch model's first positional input and first output."""
FILENAME = MODEL_FILENAMES["pytorch"]
TRACE_BATCH = 2


def export_torchscript(model, crop_size: int, path: Path, seed: int = 0, precision: str = "fp32") -> Path:
    """Trace ``model`` (eval mode; ``precision`` fp16: in FP16 behind FP32 casts) on a ``TRACE_BATCH``-image batch
    and save it, with its checksum, at ``path``."""
    import torch

    from ipsbench.export.onnx import half_precision

    from ipsbench.server.repository.checksum import write_checksum
    from ipsbench.server.engines.torch_engine import quiet_jit_deprecation

    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(TRACE_BATCH, 3, crop_size, crop_size, generator=generator)
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_jit_deprecation(), torch.no_grad():
        network = half_precision(model) if precision == "fp16" else model.eval()
        traced = torch.jit.trace(network, example, check_trace=True)
    partial = path.with_name(path.name + ".partial")
    traced.save(str(partial))
    os.replace(partial, path)
    write_checksum(path)
    return path
