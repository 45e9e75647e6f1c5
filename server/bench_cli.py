"""``ipsbench-serve bench MODEL``: options → :class:`~ipsbench.server.bench.BenchSettings`; a table, and JSON if asked."""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from ipsbench.server.bench import BatchSizeResult, BenchResult, BenchSettings, run_bench
from ipsbench.server.logformat import configure_logging

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s|m|min)?$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, None: 1.0}
HEADER = f"{'batch':>6} {'images/s':>11} {'p50 ms':>9} {'p99 ms':>9}  {'precision':<9} {'device':<8} backend"


def duration(text: str) -> float:
    """``5s``, ``500ms``, ``2m`` or a plain number of seconds → seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration '{text}' (use e.g. 5s, 500ms, 2m)")
    return float(match["value"]) * _UNIT_S[match["unit"]]


def batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid batch sizes '{text}' (use e.g. 1,8,32,64)") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers >= 1, got '{text}'")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-serve bench",
        description="In-process engine throughput of one model (no gRPC, no batcher): images/sec and latency per "
        "batch size, loaded by the same repository, loader and backend code the server uses. Each call of the "
        "engine is timed whole, host-to-device and device-to-host copies included.",
    )
    parser.add_argument("model", help="model name in the repository")
    parser.add_argument("--model-repository", type=Path, required=True, help="model repository in Triton's layout")
    parser.add_argument("--version", type=int, help="model version (default: the newest served)")
    parser.add_argument(
        "--batch-sizes", type=batch_sizes, default=(1, 8, 32, 64),
        help="comma-separated batch sizes, capped at the model's max_batch_size (default: 1,8,32,64)",
    )
    parser.add_argument("--duration", type=duration, default=5.0, help="measured time per batch size (default: 5s)")
    parser.add_argument("--warmup", type=duration, default=1.0, help="untimed runs per batch size (default: 1s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--log-verbose", action="store_true", help="log at DEBUG level")
    return parser


def row(result: BenchResult, batch: BatchSizeResult) -> str:
    return (
        f"{batch.batch_size:>6} {batch.images_per_s:>11.1f} {batch.latency_ms['p50']:>9.3f} "
        f"{batch.latency_ms['p99']:>9.3f}  {result.precision:<9} {result.device:<8} {result.backend}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_verbose)
    settings = BenchSettings(
        model=args.model,
        model_repository=args.model_repository,
        version=args.version,
        batch_sizes=args.batch_sizes,
        duration_s=args.duration,
        warmup_s=args.warmup,
        seed=args.seed,
    )
    header_printed: list[bool] = []

    def show(result: BenchResult, batch: BatchSizeResult) -> None:
        if not header_printed:
            print(
                f"{result.model} v{result.version} ({result.platform}) on {result.device} ({result.device_name}), "
                f"{result.precision}, {settings.duration_s:g}s per batch size after {settings.warmup_s:g}s warm-up"
            )
            print(HEADER)
            header_printed.append(True)
        print(row(result, batch), flush=True)

    try:
        result = run_bench(settings, on_result=show)
    except Exception as exc:  # noqa: BLE001 - any failure to load or run the model ends the bench with its reason
        log.error("bench failed for model '%s': %s", args.model, exc)
        log.debug("details", exc_info=True)
        return 1
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
