"""``ipsbench-serve bench MODEL``: options → :class:`~ipsbench.server.bench.BenchSettings`; a table, and JSON if asked."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from ipsbench.server.bench import BatchSizeResult, BenchResult, BenchSettings, run_bench
from ipsbench.server.flags import add_options, values
from ipsbench.server.logformat import configure_logging

log = logging.getLogger(__name__)

HEADER = f"{'batch':>6} {'images/s':>11} {'p50 ms':>9} {'p99 ms':>9}  {'precision':<9} {'device':<8} backend"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-serve bench",
        description="In-process engine throughput of one model (no gRPC, no batcher): images/sec and latency per "
        "batch size, loaded by the same repository, loader and backend code the server uses. Each call of the "
        "engine is timed whole, host-to-device and device-to-host copies included.",
    )
    add_options(parser, BenchSettings)
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--log-verbose", action="store_true", help="log at DEBUG level")
    return parser


def row(result: BenchResult, batch: BatchSizeResult) -> str:
    return (
        f"{batch.batch_size:>6} {batch.images_per_s:>11.1f} {batch.latency_ms['p50']:>9.3f} "
        f"{batch.latency_ms['p99']:>9.3f}  {result.precision:<9} {result.device:<8} {result.backend}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_verbose)
    try:
        settings = BenchSettings(**values(args, BenchSettings))
    except ValueError as exc:
        parser.error(str(exc))
    header_printed: list[bool] = []

    def show(result: BenchResult, batch: BatchSizeResult) -> None:
        if not header_printed:
            print(
                (f"{result.simulated}: " if result.simulated else "") +
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
