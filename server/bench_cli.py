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

POWER_HEADER = f" {'images/s/W':>10} {'W':>6} {'SM MHz/max':>10}"


def header(with_power: bool) -> str:
    """The table's header; with the NVML columns when the bench sampled the GPU."""
    return (f"{'batch':>6} {'images/s':>11} {'p50 ms':>9} {'p99 ms':>9}" + (POWER_HEADER if with_power else "")
            + f"  {'precision':<9} {'device':<8} backend")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-serve bench",
        description="In-process engine throughput of one model (no gRPC, no batcher): images/sec and latency per "
        "batch size, loaded by the same repository, loader and backend code the server uses. Each call of the "
        "engine is timed whole, host-to-device and device-to-host copies included. On a GPU, NVML gives power, "
        "images/sec per watt and SM clocks. --mode train times forward + backward + SGD step of the entry's "
        "torchvision network in PyTorch instead.",
    )
    add_options(parser, BenchSettings)
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--log-verbose", action="store_true", help="log at DEBUG level")
    return parser


def row(result: BenchResult, batch: BatchSizeResult, with_power: bool) -> str:
    power = ""
    if with_power:
        clock = batch.sm_clock_mhz or {}
        clocks = f"{_number(clock.get('mean'), '.0f')}/{_number(batch.max_sm_clock_mhz, '.0f')}"
        power = f" {_number(batch.images_per_joule, '.2f'):>10} {_number(batch.power_w, '.0f'):>6} {clocks:>10}"
    throttled = f"  throttled: {', '.join(batch.throttled)}" if batch.throttled else ""
    return (
        f"{batch.batch_size:>6} {batch.images_per_s:>11.1f} {batch.latency_ms['p50']:>9.3f} "
        f"{batch.latency_ms['p99']:>9.3f}{power}  {result.precision:<9} {result.device:<8} {result.backend}{throttled}"
    )


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_verbose)
    try:
        settings = BenchSettings(**values(args, BenchSettings))
    except ValueError as exc:
        parser.error(str(exc))
    # The power columns are there from the first batch size on, or not at all: the same GPU is sampled for all.
    with_power: list[bool] = []

    def show(result: BenchResult, batch: BatchSizeResult) -> None:
        if not with_power:
            trained = f" trained as torchvision {result.network}" if result.mode == "train" else ""
            print(
                (f"{result.simulated}: " if result.simulated else "") +
                f"{result.model} v{result.version} ({result.platform}){trained} on {result.device} "
                f"({result.device_name}), {result.precision}, {settings.duration_s:g}s per batch size after "
                f"{settings.warmup_s:g}s warm-up"
            )
            print(f"{result.mode}: {result.measures}" + (f" ({result.note})" if result.note else ""))
            with_power.append(batch.power_w is not None)
            print(header(with_power[0]))
        print(row(result, batch, with_power[0]), flush=True)

    if settings.mode == "train":
        from ipsbench.server.bench_train import run_train_bench as runner
    else:
        runner = run_bench
    try:
        result = runner(settings, on_result=show)
    except Exception as exc:  # noqa: BLE001 - any failure to load or run the model ends the bench with its reason
        log.error("bench failed for model '%s': %s", args.model, exc)
        log.debug("details", exc_info=True)
        return 1
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
