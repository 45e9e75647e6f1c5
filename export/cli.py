"""ipsbench-export: a torchvision classifier → verified ONNX, TorchScript or TensorRT model in a Triton-layout
repository; ``--preset`` writes a set of them in one command."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ipsbench.export import models

FORMATS = ("onnx", "torchscript", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
FRONT_KINDS = ("jpeg", "uint8")


def _front_kinds(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in FRONT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"--front takes a comma-separated list of {', '.join(FRONT_KINDS)}")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-export",
        description="Export a torchvision classifier to ONNX, TorchScript or a TensorRT engine in Triton's model "
        "repository layout, checked against PyTorch.",
    )
    parser.add_argument("model", nargs="?", help="torchvision model name, e.g. resnet50 (see --list)")
    parser.add_argument("--list", action="store_true", help="list the models that can be exported and exit")
    parser.add_argument(
        "--preset", choices=("p40",),
        help="export a set instead of one model: p40 = AlexNet, GoogLeNet, ResNet-50 at every precision this "
        "machine supports (ONNX FP32; with CUDA TorchScript FP16; with TensorRT FP16 and INT8 engines)",
    )
    parser.add_argument("--out", type=Path, default=Path("models"), help="model repository folder (default: models/)")
    parser.add_argument("--name", help="name in the repository (default: the model name)")
    parser.add_argument("--version", type=int, default=1, help="version folder to write (default: 1)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="artifact to write (default: onnx)")
    parser.add_argument(
        "--device", choices=("cpu", "gpu"), default=None,
        help="instance_group kind: KIND_CPU or KIND_GPU (default: cpu; gpu for --format tensorrt)",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32",
        help="engine precision: fp16 for ONNX, TorchScript (--device gpu) and TensorRT; int8 for TensorRT only "
        "(default: fp32)",
    )
    parser.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None,
        help="TorchScript: NHWC memory format in the engine (default: on for --device gpu, off for cpu)",
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="TorchScript on GPU: replay CUDA graphs per batch-size bucket"
    )
    parser.add_argument("--max-batch-size", type=int, default=64, help="config max_batch_size (default: 64)")
    parser.add_argument(
        "--opt-batch-size", type=int, help="TensorRT: batch size the kernels are tuned for (default: the maximum)"
    )
    parser.add_argument(
        "--workspace-gib", type=float, default=4.0, help="TensorRT: builder workspace in GiB (default: 4)"
    )
    parser.add_argument(
        "--calibration-images", type=Path,
        help="TensorRT INT8: folder of JPEG/PNG images to calibrate on (the calibration cache is kept next to the "
        "model's config and reused)",
    )
    parser.add_argument(
        "--calibration-limit", type=int, default=512, help="TensorRT INT8: images to calibrate on (default: 512)"
    )
    parser.add_argument(
        "--verify-images", type=Path,
        help="folder of JPEG/PNG images for the top-1 agreement check (default: synthetic images)",
    )
    parser.add_argument(
        "--verify-image-count", type=int, default=16,
        help="images in the top-1 agreement check (default: 16; 0 skips it)",
    )
    parser.add_argument("--instance-count", type=int, default=1, help="instance_group count (default: 1)")
    parser.add_argument(
        "--image-size", type=int, help="square input side; default is the model's own (224, 299 for inception_v3)"
    )
    parser.add_argument(
        "--front", type=_front_kinds,
        help="also write preprocessing fronts so the model takes encoded images or raw pixels: jpeg, uint8 or both "
        "(comma-separated)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    parser.add_argument("--weights", help="local state-dict file to load (weights_only=True) instead of random weights")
    return parser


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.max_batch_size < 1:
        parser.error("--max-batch-size must be at least 1")
    if args.verify_image_count < 0:
        parser.error("--verify-image-count must be >= 0")
    if args.opt_batch_size is not None and not 1 <= args.opt_batch_size <= args.max_batch_size:
        parser.error("--opt-batch-size must be between 1 and --max-batch-size")
    if args.format != "torchscript":
        for flag, given in {"--channels-last": args.channels_last is not None, "--cuda-graphs": args.cuda_graphs}.items():
            if given:
                parser.error(f"{flag} applies to --format torchscript only")
    if args.format != "tensorrt":
        if args.precision == "int8":
            parser.error("--precision int8 needs --format tensorrt")
        if args.calibration_images is not None:
            parser.error("--calibration-images applies to --format tensorrt --precision int8 only")
    if args.format == "tensorrt":
        if args.device == "cpu":
            parser.error("--format tensorrt builds a GPU engine: --device cpu does not apply")
        args.device = "gpu"
        return
    args.device = args.device or "cpu"
    if args.format == "torchscript":
        if args.device == "cpu" and args.precision == "fp16":
            parser.error("--precision fp16 needs --device gpu")
        if args.device == "cpu" and args.cuda_graphs:
            parser.error("--cuda-graphs needs --device gpu")
        if args.channels_last is None:
            args.channels_last = args.device == "gpu"


def _require_tensorrt() -> str | None:
    """Why TensorRT builds cannot run here, or None when they can."""
    from ipsbench.server.engines.tensorrt_engine import TensorRTUnavailable, import_runtime

    try:
        import_runtime("ipsbench-export --format tensorrt")
    except TensorRTUnavailable as exc:
        return str(exc)
    return None


def _list_models() -> int:
    for name in models.available_models():
        spec = models.describe(name)
        print(f"{name:24s} {spec.crop_size}x{spec.crop_size}  (resize {spec.resize_size}, {spec.interpolation})")
    return 0


def _run_preset(args: argparse.Namespace, progress) -> int:
    from ipsbench.export import preset
    from ipsbench.export.pipeline import export_one

    cuda, ort_cuda, tensorrt = preset.capabilities()
    chosen = preset.variants(args.preset, cuda, tensorrt, ort_cuda)
    progress.note(
        f"preset {args.preset}: {len(chosen)} exports ({', '.join(v.name for v in chosen)}); "
        f"CUDA {'yes' if cuda else 'no'}, TensorRT {'yes' if tensorrt else 'no'}"
    )
    failed = []
    for index, variant in enumerate(chosen, 1):
        progress.note(f"[{index}/{len(chosen)}] {variant.name}: {variant.format} {variant.precision}")
        result = export_one(preset.arguments_for(args, variant), variant.name, progress)
        if not result.ok:
            failed.append(variant.name)
    if failed:
        print(f"error: verification failed for {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"wrote {len(chosen)} models to {args.out}: {', '.join(v.name for v in chosen)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The exporter's libraries log every graph pass at INFO; only their warnings are worth a user's eye.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.list:
        return _list_models()

    from ipsbench.export.pipeline import export_one
    from ipsbench.export.progress import Progress

    progress = Progress()
    if args.preset:
        if args.model or args.name:
            parser.error("--preset names its own models: give no model name and no --name")
        args.device = None
        args.channels_last = None
        return _run_preset(args, progress)
    if not args.model:
        parser.error("a model name is required (or --list, or --preset)")
    _check_options(parser, args)
    if args.format == "tensorrt" and (why := _require_tensorrt()):
        print(f"error: {why}", file=sys.stderr)
        return 1
    if args.front:
        import importlib.util

        if importlib.util.find_spec("ipsbench.export.preprocess_front") is None:
            print("error: --front needs export/preprocess_front.py, which this installation lacks", file=sys.stderr)
            return 1
    models.describe(args.model, args.image_size)  # an unknown name fails here, before any work
    result = export_one(args, args.name or args.model, progress)
    if not result.ok:
        print(f"error: {args.format} output differs from PyTorch beyond tolerance; {result.path} is not usable",
              file=sys.stderr)
        return 1
    print(f"wrote {result.config_path} and {result.path} in {progress.elapsed_s:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
