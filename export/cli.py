"""ipsbench-export: a torchvision classifier → verified ONNX or TorchScript model in a Triton-layout repository."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from export import models
from export.repository import onnx_config, torchscript_config, version_dir, write_entry
from server.backends.checksum import manifest_path

FORMATS = ("onnx", "torchscript")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-export",
        description="Export a torchvision classifier to ONNX or TorchScript in Triton's model repository layout, "
        "checked against PyTorch.",
    )
    parser.add_argument("model", nargs="?", help="torchvision model name, e.g. resnet50 (see --list)")
    parser.add_argument("--list", action="store_true", help="list the models that can be exported and exit")
    parser.add_argument("--out", type=Path, default=Path("models"), help="model repository folder (default: models/)")
    parser.add_argument("--name", help="name in the repository (default: the model name)")
    parser.add_argument("--version", type=int, default=1, help="version folder to write (default: 1)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="artifact to write (default: onnx)")
    parser.add_argument(
        "--device", choices=("cpu", "gpu"), default="cpu",
        help="instance_group kind: KIND_CPU or KIND_GPU (default: cpu)",
    )
    parser.add_argument(
        "--precision", choices=("fp32", "fp16"), default="fp32", help="engine precision; fp16 needs --format "
        "torchscript --device gpu (default: fp32)"
    )
    parser.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None,
        help="TorchScript: NHWC memory format in the engine (default: on for --device gpu, off for cpu)",
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="TorchScript on GPU: replay CUDA graphs per batch-size bucket"
    )
    parser.add_argument("--max-batch-size", type=int, default=64, help="config max_batch_size (default: 64)")
    parser.add_argument("--instance-count", type=int, default=1, help="instance_group count (default: 1)")
    parser.add_argument(
        "--image-size", type=int, help="square input side; default is the model's own (224, 299 for inception_v3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    parser.add_argument("--weights", help="local state-dict file to load (weights_only=True) instead of random weights")
    return parser


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.max_batch_size < 1:
        parser.error("--max-batch-size must be at least 1")
    if args.format == "onnx":
        torchscript_only = {
            "--precision fp16": args.precision != "fp32",
            "--channels-last": args.channels_last is not None,
            "--cuda-graphs": args.cuda_graphs,
        }
        for flag, given in torchscript_only.items():
            if given:
                parser.error(f"{flag} applies to --format torchscript only")
        return
    if args.device == "cpu" and args.precision == "fp16":
        parser.error("--precision fp16 needs --device gpu")
    if args.device == "cpu" and args.cuda_graphs:
        parser.error("--cuda-graphs needs --device gpu")
    if args.channels_last is None:
        args.channels_last = args.device == "gpu"


def _export_onnx(args, spec, model, name):
    from export.onnx import export_onnx
    from export.verify import verify_onnx

    path = version_dir(args.out, name, args.version) / "model.onnx"
    print(f"exporting {args.model} ({spec.crop_size}x{spec.crop_size}) to {path}", flush=True)
    export_onnx(model, spec.crop_size, path)
    print(f"wrote {path.stat().st_size / 1e6:.1f} MB", flush=True)
    checks = verify_onnx(model, path, spec.crop_size, seed=args.seed)
    config = onnx_config(spec, name, args.max_batch_size, instance_count=args.instance_count, device=args.device)
    return path, checks, config


def _export_torchscript(args, spec, model, name):
    import torch

    from export.torchscript import FILENAME, export_torchscript
    from export.verify import verify_torchscript
    from server.backends.torch_options import TorchOptions

    path = version_dir(args.out, name, args.version) / FILENAME
    print(f"tracing {args.model} ({spec.crop_size}x{spec.crop_size}) to {path}", flush=True)
    export_torchscript(model, spec.crop_size, path, seed=args.seed)
    print(f"wrote {path.stat().st_size / 1e6:.1f} MB and {manifest_path(path).name}", flush=True)
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
    checks = verify_torchscript(
        model, path, spec.crop_size, seed=args.seed, device=device, options=options, max_batch_size=args.max_batch_size
    )
    config = torchscript_config(
        spec, name, args.max_batch_size, instance_count=args.instance_count, device=args.device,
        precision=args.precision, channels_last=args.channels_last, cuda_graphs=args.cuda_graphs,
    )
    return path, checks, config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The exporter's libraries log every graph pass at INFO; only their warnings are worth a user's eye.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.list:
        for name in models.available_models():
            spec = models.describe(name)
            print(f"{name:24s} {spec.crop_size}x{spec.crop_size}  (resize {spec.resize_size})")
        return 0
    if not args.model:
        parser.error("a model name is required (or --list)")
    _check_options(parser, args)

    spec = models.describe(args.model, args.image_size)
    name = args.name or args.model
    started = time.perf_counter()
    model = models.build(args.model, seed=args.seed, weights_path=args.weights)
    export = _export_onnx if args.format == "onnx" else _export_torchscript
    path, checks, config = export(args, spec, model, name)

    failed = False
    for check in checks:
        verdict = "ok" if check.ok else "FAILED"
        print(
            f"verify batch {check.batch_size}: max abs diff {check.max_abs_diff:.3g} "
            f"(tolerance {check.tolerance:.3g}, max |logit| {check.max_abs_reference:.3g}), "
            f"top-1 agreement {check.top1_agree:.0%} on {check.device} in {check.precision}: {verdict}"
        )
        failed |= not check.ok
    if failed:
        print(f"error: {args.format} output differs from PyTorch beyond tolerance; {path} is not usable",
              file=sys.stderr)
        path.unlink(missing_ok=True)
        manifest_path(path).unlink(missing_ok=True)
        return 1

    config_path = write_entry(args.out, config, spec.labels)
    print(f"wrote {config_path} and {path} in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
