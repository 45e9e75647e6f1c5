"""ONNX file → TensorRT engine (``model.plan``) with the TensorRT Python API, FP32, FP16 or INT8.

The engine has one optimization profile for the batch dimension (min 1, opt, max ``max_batch_size``). Kernel timings
are kept in a timing cache file in the model's folder (``<repo>/<name>/timing.cache``), so a rebuild of the same
network on the same GPU skips most of the autotuning. INT8 uses post-training calibration over a folder of images
(entropy calibration), with a calibration cache next to the timing cache that later builds reuse. A SHA-256 manifest
is written next to the plan: the server deserializes only engines whose checksum matches.

An engine is specific to the GPU model and TensorRT version it was built with: build it on the serving host (or one
with the same GPU and TensorRT version). Importable without TensorRT; every entry point says what to install.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ipsbench.server.engines.tensorrt_engine import import_runtime
from ipsbench.server.repository.layout import MODEL_FILENAMES

FILENAME = MODEL_FILENAMES["tensorrt"]
TIMING_CACHE = "timing.cache"
CALIBRATION_CACHE = "calibration.cache"
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_BYTES = 4 << 30


@dataclass(frozen=True)
class BuildSettings:
    precision: str = "fp16"
    max_batch_size: int = 64
    opt_batch_size: int | None = None
    """Batch size the kernels are tuned for (default: ``max_batch_size``)."""
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    calibration_batch_size: int = 8


class _Calibrator:
    """Entropy calibration over preprocessed images, with a cache file. Subclasses TensorRT's class at run time."""

    @staticmethod
    def create(trt, torch, images: np.ndarray, batch_size: int, cache_path: Path):
        class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self) -> None:
                trt.IInt8EntropyCalibrator2.__init__(self)
                self._batches: Iterator[np.ndarray] = (
                    images[i : i + batch_size] for i in range(0, len(images) - batch_size + 1, batch_size)
                )
                self._device = torch.empty((batch_size, *images.shape[1:]), dtype=torch.float32, device="cuda")

            def get_batch_size(self) -> int:
                return batch_size

            def get_batch(self, names):
                batch = next(self._batches, None)
                if batch is None:
                    return None
                self._device.copy_(torch.from_numpy(np.ascontiguousarray(batch)))
                torch.cuda.synchronize()
                return [int(self._device.data_ptr())]

            def read_calibration_cache(self):
                return cache_path.read_bytes() if cache_path.is_file() else None

            def write_calibration_cache(self, cache) -> None:
                cache_path.write_bytes(bytes(cache))

        return EntropyCalibrator()


def _set_precision(trt, torch, builder, config, settings: BuildSettings, input_name: str,
                   sample_shape: tuple[int, ...], cache_dir: Path, calibration_images: np.ndarray | None) -> None:
    """The builder flags (and for INT8 the calibration profile and calibrator) of ``settings.precision``."""
    if settings.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers fall back to FP16, not FP32, where INT8 has no kernel
    if settings.precision == "int8":
        if calibration_images is None or len(calibration_images) < settings.calibration_batch_size:
            raise ValueError(
                f"INT8 needs at least {settings.calibration_batch_size} calibration images (--calibration-images DIR)"
            )
        config.set_flag(trt.BuilderFlag.INT8)
        calibration_profile = builder.create_optimization_profile()
        shape = (settings.calibration_batch_size, *sample_shape)
        calibration_profile.set_shape(input_name, shape, shape, shape)
        config.set_calibration_profile(calibration_profile)
        config.int8_calibrator = _Calibrator.create(
            trt, torch, calibration_images, settings.calibration_batch_size, cache_dir / CALIBRATION_CACHE
        )


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    settings: BuildSettings,
    *,
    input_name: str,
    sample_shape: tuple[int, ...],
    cache_dir: Path,
    calibration_images: np.ndarray | None = None,
    progress=None,
) -> Path:
    """Build ``plan_path`` from ``onnx_path``; returns the plan path. Raises :class:`TensorRTUnavailable` when
    TensorRT or a GPU is missing, ``RuntimeError`` with the parser's or builder's errors otherwise."""
    from ipsbench.server.repository.checksum import write_checksum

    if settings.precision not in PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, not {settings.precision}")
    trt, torch = import_runtime("ipsbench-export --format tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    profile = builder.create_optimization_profile()
    opt = settings.opt_batch_size or settings.max_batch_size
    profile.set_shape(
        input_name, (1, *sample_shape), (opt, *sample_shape), (settings.max_batch_size, *sample_shape)
    )
    config.add_optimization_profile(profile)

    cache_dir.mkdir(parents=True, exist_ok=True)
    timing_path = cache_dir / TIMING_CACHE
    timing_cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    _set_precision(trt, torch, builder, config, settings, input_name, sample_shape, cache_dir,
                   calibration_images)

    if progress:
        progress(f"building the TensorRT {settings.precision} engine (batch 1..{settings.max_batch_size}, opt {opt})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT messages above)")
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    partial = plan_path.with_name(plan_path.name + ".partial")
    partial.write_bytes(bytes(serialized))
    os.replace(partial, plan_path)
    write_checksum(plan_path)
    return plan_path


def verify_plan(model, plan_path: Path, crop_size: int, *, seed: int, precision: str, max_batch_size: int, images):
    """Same inputs through PyTorch and the engine, run by the server's TensorRT engine."""
    from ipsbench.export.verify import check
    from ipsbench.server.engines.tensorrt_engine import TensorRTEngine

    engine = TensorRTEngine.open(plan_path, device_id=0)
    try:
        return check(
            model,
            lambda x: engine.run({engine.input_names[0]: x})[engine.output_names[0]],
            crop_size,
            seed=seed,
            device="cuda:0",
            precision=precision,
            images=images,
            max_batch_size=max_batch_size,
        )
    finally:
        engine.close()
