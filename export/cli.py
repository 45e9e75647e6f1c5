"""ipsbench-export: a torchvision classifier → verified ONNX model in a Triton-layout repository."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from export import models
from export.onnx import export_onnx
from export.repository import onnx_config, version_dir, write_entry
from export.verify import verify_onnx


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-export",
        description="Export a torchvision classifier to ONNX in Triton's model repository layout, "
        "checked against PyTorch.",
    )
    parser.add_argument("model", nargs="?", help="torchvision model name, e.g. resnet50 (see --list)")
    parser.add_argument("--list", action="store_true", help="list the models that can be exported and exit")
    parser.add_argument("--out", type=Path, default=Path("models"), help="model repository folder (default: models/)")
    parser.add_argument("--name", help="name in the repository (default: the model name)")
    parser.add_argument("--version", type=int, default=1, help="version folder to write (default: 1)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="config max_batch_size (default: 64)")
    parser.add_argument("--instance-count", type=int, default=1, help="instance_group count (default: 1)")
    parser.add_argument(
        "--image-size", type=int, help="square input side; default is the model's own (224, 299 for inception_v3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    parser.add_argument("--weights", help="local state-dict file to load (weights_only=True) instead of random weights")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The exporter's libraries log every graph pass at INFO; only their warnings are worth a user's eye.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.list:
        for name in models.available_models():
            spec = models.describe(name)
            print(f"{name:24s} {spec.crop_size}x{spec.crop_size}  (resize {spec.resize_size})")
        return 0
    if not args.model:
        build_parser().error("a model name is required (or --list)")
    if args.max_batch_size < 1:
        build_parser().error("--max-batch-size must be at least 1")

    spec = models.describe(args.model, args.image_size)
    name = args.name or args.model
    started = time.perf_counter()
    model = models.build(args.model, seed=args.seed, weights_path=args.weights)
    onnx_path = version_dir(args.out, name, args.version) / "model.onnx"
    print(f"exporting {args.model} ({spec.crop_size}x{spec.crop_size}) to {onnx_path}", flush=True)
    export_onnx(model, spec.crop_size, onnx_path)
    print(f"wrote {onnx_path.stat().st_size / 1e6:.1f} MB", flush=True)

    failed = False
    for check in verify_onnx(model, onnx_path, spec.crop_size, seed=args.seed):
        verdict = "ok" if check.ok else "FAILED"
        print(
            f"verify batch {check.batch_size}: max abs diff {check.max_abs_diff:.3g} "
            f"(tolerance {check.tolerance:.3g}, max |logit| {check.max_abs_reference:.3g}), "
            f"top-1 agreement {check.top1_agree:.0%}: {verdict}"
        )
        failed |= not check.ok
    if failed:
        print(f"error: ONNX Runtime output differs from PyTorch beyond tolerance; {onnx_path} is not usable",
              file=sys.stderr)
        onnx_path.unlink(missing_ok=True)
        return 1

    config = onnx_config(spec, name, args.max_batch_size, instance_count=args.instance_count)
    config_path = write_entry(args.out, config, spec.labels)
    print(f"wrote {config_path} and {onnx_path} in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
