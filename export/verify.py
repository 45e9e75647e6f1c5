"""Check that an exported artifact computes what the PyTorch model computes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# |ours - torch| <= ATOL + RTOL * max|torch| for every output of every checked batch.
FP32_ATOL = 1e-4
FP32_RTOL = 1e-3
VERIFY_BATCH_SIZES = (1, 4)


@dataclass
class Agreement:
    batch_size: int
    max_abs_diff: float
    max_abs_reference: float
    top1_agree: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def verify_onnx(model, onnx_path: Path, crop_size: int, seed: int = 0) -> list[Agreement]:
    """Same random inputs through PyTorch and ONNX Runtime (CPU) at each verification batch size."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(seed)
    results = []
    for batch_size in VERIFY_BATCH_SIZES:
        x = rng.standard_normal((batch_size, 3, crop_size, crop_size), dtype=np.float32)
        with torch.inference_mode():
            reference = model(torch.from_numpy(x)).numpy()
        (ours,) = session.run(None, {input_name: x})
        scale = float(np.abs(reference).max())
        results.append(
            Agreement(
                batch_size=batch_size,
                max_abs_diff=float(np.abs(ours - reference).max()),
                max_abs_reference=scale,
                top1_agree=float((ours.argmax(1) == reference.argmax(1)).mean()),
                tolerance=FP32_ATOL + FP32_RTOL * scale,
            )
        )
    return results
