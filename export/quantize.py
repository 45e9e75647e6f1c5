"""FP32 ONNX → INT8 QDQ ONNX by static post-training calibration (ONNX Runtime's quantizer).

The graph gets QuantizeLinear/DequantizeLinear pairs around each quantized operator (QDQ format): ONNX Runtime's CPU
provider fuses them into integer kernels, and TensorRT 11 reads the same nodes as explicit quantization, so one file
serves both. Weights are signed INT8 per output channel; activations are signed INT8 per tensor, their scales from
running the calibration images through the FP32 graph (MinMax of each tensor). Everything is symmetric (zero point
0) because TensorRT takes only symmetric INT8 Q/DQ; ONNX Runtime's CPU kernels run that S8S8 form fast on current x86
and ARM CPUs.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

MAX_CALIBRATION_IMAGES = 10_000
"""The most images one calibration may read: each is a full forward pass of the FP32 graph with every activation
kept for its range."""
CALIBRATION_BATCH = 8


class _Batches:
    """``onnxruntime.quantization.CalibrationDataReader``'s protocol over preprocessed images."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self._batches = iter([{input_name: np.ascontiguousarray(images[i:i + CALIBRATION_BATCH])}
                              for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def quantize_qdq(fp32_path: Path, int8_path: Path, images: np.ndarray, input_name: str) -> Path:
    """Write ``int8_path``, the QDQ INT8 graph of ``fp32_path`` calibrated on ``images`` (NCHW FP32)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not 1 <= len(images) <= MAX_CALIBRATION_IMAGES:
        raise ValueError(f"INT8 calibration needs 1 to {MAX_CALIBRATION_IMAGES} images, got {len(images)}")
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ipsbench-quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Shape inference and constant folding first, so that every tensor the quantizer meets has a known type.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(int8_path), _Batches(input_name, images),
            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": True},
        )
    return int8_path
