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
from ipsbench.export.errors import ExportError
from ipsbench.export.progress import Progress
from ipsbench.export.record import entry_record_path, export_record, write_record
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
    record: dict | None = None
    """``export.json``'s document: how the entry was made and what its checks measured."""

    @property
    def ok(self) -> bool:
        return self.config_path is not None


@dataclass
class ImageSets:
    """The images an export calibrates on (INT8) and verifies on, never the same ones."""

    calibration: np.ndarray | None
    verification: np.ndarray | None
    calibration_source: dict | None
    """``{"source": "folder" | "synthetic", "images": N}`` for INT8, else None."""


def image_sets(args: ExportSettings, spec: models.NetworkSpec) -> ImageSets:
    """Calibration images (INT8 only) and verification images, disjoint: a calibration folder that is also the
    verification folder (or the only folder given) is split, its first ``--calibration-limit`` images in name order
    calibrating and the next ``--verify-image-count`` verifying; synthetic images differ by seed."""
    count = args.verify_image_count
    calibration = source = None
    calibration_folder = Path(args.calibration_images) if args.calibration_images is not None else None
    verify_folder = Path(args.verify_images) if args.verify_images is not None else None
    verification_files = None
    if args.precision == "int8":
        if calibration_folder is not None:
            files = images.image_files(calibration_folder)
            chosen = files[:args.calibration_limit]
            calibration = np.stack([images.preprocess(path, spec) for path in chosen])
            source = {"source": "folder", "images": len(chosen)}
            if verify_folder is None or verify_folder.resolve() == calibration_folder.resolve():
                verification_files = files[len(chosen):][:count]
                if count and not verification_files:
                    raise ExportError(
                        f"{calibration_folder} holds {len(files)} images and calibration takes the first "
                        f"{len(chosen)}: none is left to check agreement on; add images, lower "
                        "--calibration-limit or give --verify-images another folder")
        else:
            calibration = images.synthetic(spec, args.calibration_limit, seed=args.seed + 1)
            source = {"source": "synthetic", "images": len(calibration)}
    if count == 0:
        verification = None
    elif verification_files is not None:
        verification = np.stack([images.preprocess(path, spec) for path in verification_files])
    elif verify_folder is not None:
        verification = images.from_folder(verify_folder, spec, limit=count)
    else:
        verification = images.synthetic(spec, count, seed=args.seed)
    return ImageSets(calibration, verification, source)


def _precision_onnx(args, spec, model, path: Path, sets: ImageSets, progress: Progress) -> None:
    """``path``: the ONNX graph in ``args.precision`` (INT8: the FP32 graph quantized to QDQ by calibration)."""
    from ipsbench.export.onnx import INPUT_NAME, export_onnx

    if args.precision != "int8":
        with progress.step(f"exporting {args.model} ({spec.crop_size}x{spec.crop_size}, {args.precision}) to ONNX"):
            export_onnx(model, spec.crop_size, path, precision=args.precision)
        return
    from ipsbench.export.quantize import quantize_qdq

    if sets.calibration_source and sets.calibration_source["source"] == "synthetic":
        progress.note("no --calibration-images: calibrating INT8 on synthetic images (speed is right, accuracy "
                      "is not representative)")
    with tempfile.TemporaryDirectory(prefix="ipsbench-int8-") as scratch:
        fp32 = Path(scratch) / "fp32.onnx"
        with progress.step(f"exporting {args.model} ({spec.crop_size}x{spec.crop_size}) to ONNX"):
            export_onnx(model, spec.crop_size, fp32)
        with progress.step(f"quantizing to INT8 QDQ on {len(sets.calibration)} calibration images"):
            quantize_qdq(fp32, path, sets.calibration, INPUT_NAME)


def _onnx(args, spec, model, name, progress: Progress, sets: ImageSets):
    from ipsbench.export.verify import verify_onnx

    path = version_dir(args.out, name, args.version) / MODEL_FILENAMES["onnxruntime"]
    _precision_onnx(args, spec, model, path, sets, progress)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)
    with progress.step("verifying against PyTorch with ONNX Runtime"):
        checks = verify_onnx(
            model, path, spec.crop_size, seed=args.seed, precision=args.precision,
            images=sets.verification, max_batch_size=args.max_batch_size, required_top1=args.min_agreement,
        )
    config = onnx_config(
        spec, name, args.max_batch_size, instance_count=args.instance_count, device=args.device,
        precision=args.precision,
    )
    return path, checks, config


def _torchscript(args, spec, model, name, progress: Progress, sets: ImageSets):
    import torch

    from ipsbench.export.torchscript import FILENAME, export_torchscript
    from ipsbench.export.verify import verify_torchscript
    from ipsbench.server.engines.torch_options import TorchOptions

    path = version_dir(args.out, name, args.version) / FILENAME
    with progress.step(f"tracing {args.model} ({spec.crop_size}x{spec.crop_size}, {args.precision}) to TorchScript"):
        export_torchscript(model, spec.crop_size, path, seed=args.seed, precision=args.precision)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {manifest_path(path).name}", flush=True)
    on_gpu = args.device == "gpu" and torch.cuda.is_available()
    if on_gpu:
        device = "cuda:0"
        options = TorchOptions(args.precision, args.channels_last, args.cuda_graphs)
    else:
        device = "cpu"
        options = TorchOptions(channels_last=args.channels_last)
        if args.device == "gpu":
            print(f"CUDA is not available here: verifying on the CPU (the file computes in {args.precision} "
                  "itself); the GPU settings are checked when ipsbench-serve loads the model", flush=True)
    with progress.step(f"verifying against PyTorch on {device}"):
        checks = verify_torchscript(
            model, path, spec.crop_size, seed=args.seed, device=device, options=options,
            max_batch_size=args.max_batch_size, images=sets.verification, required_top1=args.min_agreement,
            precision=args.precision,
        )
    config = torchscript_config(
        spec, name, args.max_batch_size, instance_count=args.instance_count, device=args.device,
        precision=args.precision, channels_last=args.channels_last, cuda_graphs=args.cuda_graphs,
    )
    return path, checks, config


def _tensorrt(args, spec, model, name, progress: Progress, sets: ImageSets):
    """The graph in its precision (FP16 graph, or QDQ INT8 from calibration) → a strongly typed TensorRT engine."""
    from ipsbench.export import tensorrt
    from ipsbench.export.onnx import INPUT_NAME

    path = version_dir(args.out, name, args.version) / tensorrt.FILENAME
    settings = tensorrt.BuildSettings(
        precision=args.precision, max_batch_size=args.max_batch_size, opt_batch_size=args.opt_batch_size,
        workspace_bytes=int(args.workspace_gib * (1 << 30)),
    )
    with tempfile.TemporaryDirectory(prefix="ipsbench-trt-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        _precision_onnx(args, spec, model, onnx_path, sets, progress)
        with progress.step(f"building the TensorRT {args.precision} engine"):
            tensorrt.build_engine(
                onnx_path, path, settings, input_name=INPUT_NAME, sample_shape=(3, spec.crop_size, spec.crop_size),
                cache_dir=args.out / name,
            )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {manifest_path(path).name}", flush=True)
    with progress.step("verifying against PyTorch with the TensorRT engine"):
        checks = tensorrt.verify_plan(
            model, path, spec.crop_size, seed=args.seed, precision=args.precision,
            max_batch_size=args.max_batch_size, images=sets.verification, required_top1=args.min_agreement,
        )
    config = tensorrt_config(
        spec, name, args.max_batch_size, instance_count=args.instance_count, precision=args.precision
    )
    return path, checks, config


EXPORTERS = {"onnx": _onnx, "torchscript": _torchscript, "tensorrt": _tensorrt}


def export_one(args: ExportSettings, progress: Progress) -> ExportResult:
    """Export ``args.model`` as ``args.entry_name``; print each check; write the config (and ``export.json``) only
    when every check passed. Raises :class:`~ipsbench.export.errors.ExportError` when the export cannot go ahead."""
    name = args.entry_name
    spec = models.describe(args.model, args.image_size)
    sets = image_sets(args, spec)  # before any work: a folder that cannot serve fails here
    model = models.build(args.model, seed=args.seed, weights_path=args.weights or None, image_size=spec.crop_size)
    path, checks, config = EXPORTERS[args.format](args, spec, model, name, progress, sets)
    for agreement in checks:
        print(agreement.describe(), flush=True)
    ok = all(agreement.ok for agreement in checks)
    record = export_record(args, spec.crop_size, checks, sets.calibration_source, ok)
    if not ok:
        path.unlink(missing_ok=True)
        manifest_path(path).unlink(missing_ok=True)
        return ExportResult(name, path, checks, None, record)
    config_path = write_entry(args.out, config, spec.labels)
    write_record(entry_record_path(args.out, name), record)
    if args.front:
        write_fronts(args, spec, name, progress)
    return ExportResult(name, path, checks, config_path, record)


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
