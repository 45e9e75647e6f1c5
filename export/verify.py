"""Check that an exported artifact computes what the PyTorch model computes.

The reference is always the eager model in FP32 on the CPU; the artifact runs as it will be served (for TorchScript:
through the server's own PyTorch engine, on the device and in the precision of its config; for TensorRT: through the
server's TensorRT engine). Two kinds of check: random Gaussian batches at a few batch sizes (largest absolute
difference against a tolerance per precision), and a set of images (synthetic, or a folder the user gives) on which
the top-1 class must agree with PyTorch's.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2), "int8": (float("inf"), 0.0)}
"""(atol, rtol) per precision the artifact computes in: ``|ours - torch| <= atol + rtol * max|torch|`` for every output
of every checked batch. FP16 keeps about three significant digits per operation and the errors add up through a deep
network: ResNet-50 (random weights, 224x224) in FP16 differs by about 7e-4 of its largest logit, so 1e-2 leaves a
margin of ten. INT8 is judged by top-1 agreement only: its per-logit error depends on the calibration data."""
MIN_TOP1_AGREEMENT = {"fp32": 1.0, "fp16": 0.9, "int8": 0.8}
"""Share of the verification images whose top-1 class must match PyTorch's."""
VERIFY_BATCH_SIZES = (1, 4)

Runner = Callable[[np.ndarray], np.ndarray]
"""One NCHW FP32 batch → the artifact's logits."""


@dataclass
class Agreement:
    batch_size: int
    max_abs_diff: float
    max_abs_reference: float
    top1_agree: float
    tolerance: float
    device: str = "cpu"
    precision: str = "fp32"
    on_images: bool = False
    """True: the batch was the image set, held to :data:`MIN_TOP1_AGREEMENT` (or ``required_top1``)."""
    top5_agree: float = 1.0
    """Share whose top-1 class is among the reference's top 5."""
    required_top1: float | None = None
    """``--min-agreement``: the image set's top-1 agreement minimum, instead of the precision's default."""

    @property
    def min_top1(self) -> float:
        if not self.on_images:
            return 0.0
        return MIN_TOP1_AGREEMENT[self.precision] if self.required_top1 is None else self.required_top1

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_agree >= self.min_top1

    def describe(self) -> str:
        what = f"images {self.batch_size}" if self.on_images else f"batch {self.batch_size}"
        top1 = f"top-1 agreement {self.top1_agree:.0%}"
        if self.on_images:
            top1 += f" (at least {self.min_top1:.0%}), top-5 agreement {self.top5_agree:.0%}"
        return (
            f"verify {what}: max abs diff {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}, "
            f"max |logit| {self.max_abs_reference:.3g}), {top1} on {self.device} in {self.precision}: "
            f"{'ok' if self.ok else 'FAILED'}"
        )


def top5_agreement(ours: np.ndarray, reference: np.ndarray) -> float:
    """Share of rows whose top-1 class is among the reference's five highest."""
    k = min(5, reference.shape[1])
    top5 = np.argpartition(-reference, k - 1, axis=1)[:, :k]
    return float((top5 == ours.argmax(1)[:, None]).any(axis=1).mean())


def compare(
    batch_size: int, ours: np.ndarray, reference: np.ndarray, device: str, precision: str, on_images: bool = False,
    required_top1: float | None = None,
) -> Agreement:
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
        on_images=on_images,
        top5_agree=top5_agreement(ours, reference),
        required_top1=required_top1,
    )


def reference_batches(
    model, crop_size: int, seed: int, batch_sizes=VERIFY_BATCH_SIZES
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input, eager FP32 CPU output) per batch size, from one seeded generator."""
    rng = np.random.default_rng(seed)
    return [
        (x, _eager(model, x))
        for x in (rng.standard_normal((b, 3, crop_size, crop_size), dtype=np.float32) for b in batch_sizes)
    ]


def _eager(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def check(
    model,
    run: Runner,
    crop_size: int,
    *,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "fp32",
    images: np.ndarray | None = None,
    max_batch_size: int = 64,
    required_top1: float | None = None,
) -> list[Agreement]:
    """Random batches (sizes capped at ``max_batch_size``), then ``images`` in batches of at most
    ``max_batch_size``, through ``run`` and the eager model; ``required_top1`` (``--min-agreement``) holds the
    image set to that top-1 agreement instead of the precision's default."""
    sizes = sorted({min(b, max_batch_size) for b in VERIFY_BATCH_SIZES})
    results = [
        compare(len(x), run(x), reference, device, precision)
        for x, reference in reference_batches(model, crop_size, seed, sizes)
    ]
    if images is not None and len(images):
        ours, reference = [], []
        for start in range(0, len(images), max_batch_size):
            batch = np.ascontiguousarray(images[start : start + max_batch_size])
            ours.append(run(batch))
            reference.append(_eager(model, batch))
        results.append(
            compare(len(images), np.concatenate(ours), np.concatenate(reference), device, precision, on_images=True,
                    required_top1=required_top1)
        )
    return results


def verify_onnx(
    model,
    onnx_path: Path,
    crop_size: int,
    seed: int = 0,
    *,
    precision: str = "fp32",
    images: np.ndarray | None = None,
    max_batch_size: int = 64,
    required_top1: float | None = None,
) -> list[Agreement]:
    """Same inputs through PyTorch and ONNX Runtime (CPU) at each verification batch size and on ``images``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: x})[0]

    return check(
        model, run, crop_size, seed=seed, precision=precision, images=images, max_batch_size=max_batch_size,
        required_top1=required_top1,
    )


def verify_torchscript(
    model,
    path: Path,
    crop_size: int,
    *,
    seed: int = 0,
    device: str = "cpu",
    options=None,
    max_batch_size: int = 64,
    images: np.ndarray | None = None,
    required_top1: float | None = None,
    precision: str | None = None,
) -> list[Agreement]:
    """Same inputs through PyTorch and the TorchScript file, loaded by the server's PyTorch engine on
    ``device`` (``cpu`` or ``cuda:N``) with ``options`` (:class:`ipsbench.server.engines.torch_options.TorchOptions`)."""
    import torch

    from ipsbench.server.engines.torch_engine import EngineLayout, TorchEngine
    from ipsbench.server.engines.torch_options import TorchOptions

    options = options or TorchOptions()
    layout = EngineLayout(
        sample_shapes=((3, crop_size, crop_size),),
        input_dtypes=(np.dtype(np.float32),),
        output_dtypes=(np.dtype(np.float32),),
        max_batch_size=max_batch_size,
    )
    engine = TorchEngine.open(path, torch.device(device), options, layout)
    try:
        return check(
            model,
            lambda x: engine.run([x])[0],
            crop_size,
            seed=seed,
            device=device,
            precision=precision or options.precision,
            images=images,
            max_batch_size=max_batch_size,
            required_top1=required_top1,
        )
    finally:
        engine.close()
