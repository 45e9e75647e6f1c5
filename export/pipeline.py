"""One model → one verified entry of the model repository, in the format and precision asked for.

Each format writes its artifact into the version folder, verifies it against the eager PyTorch model (see
:mod:`ipsbench.export.verify`) and returns the config to write. Nothing is written into the repository's config when a check
fails, and the artifact is removed, so a repository never holds an entry that was not verified.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ipsbench.export import images, models
from ipsbench.export.progress import Progress
from ipsbench.export.repository import onnx_config, tensorrt_config, torchscript_config, write_entry
from ipsbench.export.settings import ExportSettings
from ipsbench.export.verify import Agreement
from ipsbench.server.repository.checksum import manifest_path
from ipsbench.server.repository.layout import MODEL_FILENAMES, version_dir


@dataclass
class ExportResult:
    name: str
    path: Path
    checks: list[Agreement]
    config_path: Path | None
    """None when verification failed (nothing written)."""

    @property
    def ok(self) -> bool:
        return self.config_path is not None


def verification_images(args: ExportSettings, spec: models.NetworkSpec) -> np.ndarray | None:
    count = args.verify_image_count
    if count == 0:
        return None
    if args.verify_images is not None:
        return images.from_folder(Path(args.verify_images), spec, limit=count)
    return images.synthetic(spec, count, seed=args.seed)


def _onnx(args, spec, model, name, progress: Progress):
    from ipsbench.export.onnx import export_onnx
    from ipsbench.export.verify import verify_onnx

    path = version_dir(args.out, name, args.version) / MODEL_FILENAMES["onnxruntime"]
    with progress.step(f"exporting {args.model} ({spec.crop_size}x{spec.crop_size}, {args.precision}) to ONNX"):
        export_onnx(model, spec.crop_size, path, precision=args.precision)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)
    with progress.step("verifying against PyTorch with ONNX Runtime"):
        checks = verify_onnx(
            model, path, spec.crop_size, seed=args.seed, precision=args.precision,
            images=verification_images(args, spec), max_batch_size=args.max_batch_size,
        )
    config = onnx_config(
        spec, name, args.max_batch_size, instance_count=args.instance_count, device=args.device,
        precision=args.precision,
    )
    return path, checks, config


def _torchscript(args, spec, model, name, progress: Progress):
    import torch

    from ipsbench.export.torchscript import FILENAME, export_torchscript
    from ipsbench.export.verify import verify_torchscript
    from ipsbench.server.engines.torch_options import TorchOptions

    path = version_dir(args.out, name, args.version) / FILENAME
    with progress.step(f"tracing {args.model} ({spec.crop_size}x{spec.crop_size}) to TorchScript"):
        export_torchscript(model, spec.crop_size, path, seed=args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {manifest_path(path).name}", flush=True)
    on_gpu = args.device == "gpu" and torch.cuda.is_available()
    if on_gpu:
        device = "cuda:0"
        options = TorchOptions(args.precision, args.channels_last, args.cuda_graphs)
    else:
        device = "cpu"
        options = TorchOptions(channels_last=args.channels_last)
        if args.device == "gpu":
            print("CUDA is not available here: verifying on the CPU in FP32; the GPU settings are checked when "
                  "ipsbench-serve loads the model", flush=True)
    with progress.step(f"verifying against PyTorch on {device}"):
        checks = verify_torchscript(
            model, path, spec.crop_size, seed=args.seed, device=device, options=options,
            max_batch_size=args.max_batch_size, images=verification_images(args, spec),
        )
    config = torchscript_config(
        spec, name, args.max_batch_size, instance_count=args.instance_count, device=args.device,
        precision=args.precision, channels_last=args.channels_last, cuda_graphs=args.cuda_graphs,
    )
    return path, checks, config


def _tensorrt(args, spec, model, name, progress: Progress):
    from ipsbench.export import tensorrt
    from ipsbench.export.onnx import INPUT_NAME, export_onnx

    path = version_dir(args.out, name, args.version) / tensorrt.FILENAME
    calibration = None
    if args.precision == "int8":
        if args.calibration_images is not None:
            with progress.step(f"reading calibration images from {args.calibration_images}"):
                calibration = images.from_folder(Path(args.calibration_images), spec, limit=args.calibration_limit)
        else:
            progress.note("no --calibration-images: calibrating INT8 on synthetic images (speed is right, "
                          "accuracy is not representative)")
            calibration = images.synthetic(spec, args.calibration_limit, seed=args.seed + 1)
    settings = tensorrt.BuildSettings(
        precision=args.precision, max_batch_size=args.max_batch_size, opt_batch_size=args.opt_batch_size,
        workspace_bytes=int(args.workspace_gib * (1 << 30)),
    )
    with tempfile.TemporaryDirectory(prefix="ipsbench-trt-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        with progress.step(f"exporting {args.model} ({spec.crop_size}x{spec.crop_size}) to ONNX for TensorRT"):
            export_onnx(model, spec.crop_size, onnx_path)
        with progress.step(f"building the TensorRT {args.precision} engine"):
            tensorrt.build_engine(
                onnx_path, path, settings, input_name=INPUT_NAME, sample_shape=(3, spec.crop_size, spec.crop_size),
                cache_dir=args.out / name, calibration_images=calibration,
            )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {manifest_path(path).name}", flush=True)
    with progress.step("verifying against PyTorch with the TensorRT engine"):
        checks = tensorrt.verify_plan(
            model, path, spec.crop_size, seed=args.seed, precision=args.precision,
            max_batch_size=args.max_batch_size, images=verification_images(args, spec),
        )
    config = tensorrt_config(
        spec, name, args.max_batch_size, instance_count=args.instance_count, precision=args.precision
    )
    return path, checks, config


EXPORTERS = {"onnx": _onnx, "torchscript": _torchscript, "tensorrt": _tensorrt}


def export_one(args: ExportSettings, progress: Progress) -> ExportResult:
    """Export ``args.model`` as ``args.entry_name``; print each check; write the config only when every check
    passed. Raises :class:`~ipsbench.export.errors.ExportError` when the export cannot go ahead."""
    name = args.entry_name
    spec = models.describe(args.model, args.image_size)
    model = models.build(args.model, seed=args.seed, weights_path=args.weights or None, image_size=spec.crop_size)
    path, checks, config = EXPORTERS[args.format](args, spec, model, name, progress)
    for agreement in checks:
        print(agreement.describe(), flush=True)
    if not all(agreement.ok for agreement in checks):
        path.unlink(missing_ok=True)
        manifest_path(path).unlink(missing_ok=True)
        return ExportResult(name, path, checks, None)
    config_path = write_entry(args.out, config, spec.labels)
    if args.front:
        write_fronts(args, spec, name, progress)
    return ExportResult(name, path, checks, config_path)


def write_fronts(args: ExportSettings, spec: models.NetworkSpec, name: str, progress: Progress) -> list[Path]:
    """The preprocessing fronts (``--front jpeg,uint8``) that let ``name`` take encoded images or raw pixels."""
    from ipsbench.export.preprocess_front import write_preprocess_front

    written = []
    for kind in args.front:
        with progress.step(f"writing the {kind} preprocessing front for {name}"):
            written.append(write_preprocess_front(args.out, name, kind, spec.recipe, args.preprocess_device))
        print(f"wrote the {kind} front {written[-1]}", flush=True)
    if args.triton_fronts is not None:
        from ipsbench.export.triton_fronts import write_triton_fronts

        with progress.step(f"writing Triton's preprocessing models and ensembles for {name}"):
            triton = write_triton_fronts(args.out, args.triton_fronts, name, args.front, spec.recipe)
        print(f"wrote for Triton: {', '.join(str(folder) for folder in triton)}", flush=True)
    return written
