"""Check that an exported artifact computes what the PyTorch model computes.

The reference is always the eager model in FP32 on the CPU; the artifact runs as it will be served (for TorchScript:
through the server's own PyTorch engine, on the device and in the precision of its config).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2)}
"""(atol, rtol) per precision the artifact computes in: ``|ours - torch| <= atol + rtol * max|torch|`` for every output
of every checked batch. FP16 keeps about three significant digits per operation and the errors add up through a deep
network: ResNet-50 (random weights, 224x224) in FP16 differs by about 7e-4 of its largest logit, so 1e-2 leaves a
margin of ten."""
VERIFY_BATCH_SIZES = (1, 4)


@dataclass
class Agreement:
    batch_size: int
    max_abs_diff: float
    max_abs_reference: float
    top1_agree: float
    tolerance: float
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def compare(batch_size: int, ours: np.ndarray, reference: np.ndarray, device: str, precision: str) -> Agreement:
    atol, rtol = TOLERANCES[precision]
    scale = float(np.abs(reference).max())
    return Agreement(
        batch_size=batch_size,
        max_abs_diff=float(np.abs(ours.astype(np.float32) - reference).max()),
        max_abs_reference=scale,
        top1_agree=float((ours.argmax(1) == reference.argmax(1)).mean()),
        tolerance=atol + rtol * scale,
        device=device,
        precision=precision,
    )


def reference_batches(
    model, crop_size: int, seed: int, batch_sizes=VERIFY_BATCH_SIZES
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input, eager FP32 CPU output) per batch size, from one seeded generator."""
    import torch

    rng = np.random.default_rng(seed)
    batches = []
    for batch_size in batch_sizes:
        x = rng.standard_normal((batch_size, 3, crop_size, crop_size), dtype=np.float32)
        with torch.inference_mode():
            batches.append((x, model(torch.from_numpy(x)).numpy()))
    return batches


def verify_onnx(model, onnx_path: Path, crop_size: int, seed: int = 0) -> list[Agreement]:
    """Same random inputs through PyTorch and ONNX Runtime (CPU) at each verification batch size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return [
        compare(len(x), session.run(None, {input_name: x})[0], reference, "cpu", "fp32")
        for x, reference in reference_batches(model, crop_size, seed)
    ]


def verify_torchscript(
    model, path: Path, crop_size: int, *, seed: int = 0, device: str = "cpu", options=None, max_batch_size: int = 64
) -> list[Agreement]:
    """Same random inputs through PyTorch and the TorchScript file, loaded by the server's PyTorch engine on
    ``device`` (``cpu`` or ``cuda:N``) with ``options`` (:class:`server.backends.torch_options.TorchOptions`)."""
    import torch

    from server.backends.torch_engine import EngineLayout, TorchEngine
    from server.backends.torch_options import TorchOptions

    options = options or TorchOptions()
    layout = EngineLayout(
        sample_shapes=((3, crop_size, crop_size),),
        input_dtypes=(np.dtype(np.float32),),
        output_dtypes=(np.dtype(np.float32),),
        max_batch_size=max_batch_size,
    )
    engine = TorchEngine.open(path, torch.device(device), options, layout)
    try:
        sizes = sorted({min(b, max_batch_size) for b in VERIFY_BATCH_SIZES})
        return [
            compare(len(x), engine.run([x])[0], reference, device, options.precision)
            for x, reference in reference_batches(model, crop_size, seed, sizes)
        ]
    finally:
        engine.close()
