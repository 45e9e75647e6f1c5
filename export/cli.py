"""ipsbench-export: a torchvision classifier → verified ONNX, TorchScript or TensorRT model in a Triton-layout
repository; ``--preset`` writes a set of them in one command (one that fails is named, the others still export)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ipsbench.export import models
from ipsbench.export.errors import ExportError
from ipsbench.export.settings import ExportSettings
from ipsbench.server.flags import add_options, values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-export",
        description="Export a torchvision classifier to ONNX, TorchScript or a TensorRT engine in Triton's model "
        "repository layout, checked against PyTorch.",
    )
    parser.add_argument("--list", action="store_true", help="list the models that can be exported and exit")
    parser.add_argument(
        "--preset", choices=("p40",),
        help="export a set instead of one model: p40 = AlexNet, GoogLeNet, ResNet-50 at every precision this "
        "machine supports (ONNX FP32; with CUDA TorchScript FP16; with TensorRT FP16 and INT8 engines)",
    )
    add_options(parser, ExportSettings)
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the export's record (how it was made, every check's figures, ok or not) "
                        "to FILE; the entry's own copy is export.json next to its config")
    return parser


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


def _run_preset(preset_name: str, settings: ExportSettings, progress) -> int:
    """Every export of the preset; a failed one is reported and the rest go on; non-zero when any failed."""
    from ipsbench.export import preset
    from ipsbench.export.pipeline import export_one

    cuda, ort_cuda, tensorrt = preset.capabilities()
    chosen = preset.variants(preset_name, cuda, tensorrt, ort_cuda)
    progress.note(
        f"preset {preset_name}: {len(chosen)} exports ({', '.join(v.name for v in chosen)}); "
        f"CUDA {'yes' if cuda else 'no'}, TensorRT {'yes' if tensorrt else 'no'}"
    )
    failed = []
    for index, variant in enumerate(chosen, 1):
        progress.note(f"[{index}/{len(chosen)}] {variant.name}: {variant.format} {variant.precision}")
        try:
            variant_settings = preset.settings_for(settings, variant)
            result = export_one(variant_settings, progress)
        except (ExportError, ValueError, RuntimeError, OSError) as error:
            print(f"error: {variant.name}: {error}", file=sys.stderr)
            failed.append(f"{variant.name} ({error})")
            continue
        if not result.ok:
            failed.append(f"{variant.name} (verification failed)")
    written = len(chosen) - len(failed)
    if failed:
        print(f"error: {len(failed)} of {len(chosen)} exports failed: {'; '.join(failed)}", file=sys.stderr)
        print(f"wrote {written} models to {settings.out}", file=sys.stderr)
        return 1
    print(f"wrote {len(chosen)} models to {settings.out}: {', '.join(v.name for v in chosen)}")
    return 0


def _settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ExportSettings:
    try:
        return ExportSettings(**values(args, ExportSettings))
    except ValueError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The exporter's libraries log every graph pass at INFO; only their warnings are worth a user's eye.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        return _main(parser, args)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.list:
        return _list_models()
    from ipsbench.export.pipeline import export_one
    from ipsbench.export.progress import Progress

    progress = Progress()
    if args.preset:
        if args.model or args.name or args.simulate or args.json:
            parser.error("--preset names its own models: give no model name, no --name, no --simulate and no --json")
        return _run_preset(args.preset, _settings(parser, args), progress)
    if not args.model:
        parser.error("a model name is required (or --list, or --preset)")
    settings = _settings(parser, args)
    if settings.simulate is not None:
        from ipsbench.export.simulated import describe_entry, write_simulated_entry

        config_path, profile = write_simulated_entry(settings)
        print(describe_entry(config_path, profile))
        return 0
    if settings.format == "tensorrt" and (why := _require_tensorrt()):
        print(f"error: {why}", file=sys.stderr)
        return 1
    models.describe(settings.model, settings.image_size)  # an unknown name fails here, before any work
    result = export_one(settings, progress)
    if args.json is not None and result.record is not None:
        from ipsbench.export.record import write_record

        write_record(args.json, result.record)
    if not result.ok:
        failed = [check for check in result.checks if not check.ok]
        low = [check for check in failed if check.top1_agree < check.min_top1]
        if low:
            check = low[0]
            print(f"error: top-1 agreement with FP32 {check.top1_agree:.1%} on {check.batch_size} images is below "
                  f"the minimum {check.min_top1:.1%}; {result.path} is not usable", file=sys.stderr)
        else:
            print(f"error: {settings.format} output differs from PyTorch beyond tolerance; {result.path} is not "
                  "usable", file=sys.stderr)
        return 1
    print(f"wrote {result.config_path} and {result.path} in {progress.elapsed_s:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
