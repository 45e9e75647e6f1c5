"""``ipsbench-load``: a thin shell that turns arguments into settings and runs :class:`loadgen.run.LoadRun`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from loadgen.durations import parse_duration_s
from loadgen.settings import (
    PAYLOADS,
    RunSettings,
    SweepSettings,
    TargetSettings,
    ValiditySettings,
    WorkloadSettings,
    help_for,
)

logger = logging.getLogger("loadgen")


def _duration(text: str) -> float:
    try:
        return parse_duration_s(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid concurrency list {text!r}: use e.g. 1,2,4") from None
    if not levels:
        raise argparse.ArgumentTypeError("at least one concurrency level is needed")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-load", description="Load a KServe v2 gRPC inference server and report images/sec and latency."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sweep = commands.add_parser("sweep", help="closed-loop concurrency sweep", description=SweepSettings.__doc__)
    sweep.add_argument("--target", required=True, help=help_for(TargetSettings, "target"))
    sweep.add_argument("--model", required=True, help=help_for(TargetSettings, "model"))
    sweep.add_argument("--model-version", default="", help=help_for(TargetSettings, "model_version"))
    sweep.add_argument("--concurrency", type=_levels, default=(1, 2, 4), help=help_for(SweepSettings, "concurrency"))
    sweep.add_argument("--duration", type=_duration, default=10.0, help=help_for(SweepSettings, "window_s"))
    sweep.add_argument("--warmup", type=_duration, default=2.0, help=help_for(SweepSettings, "warmup_s"))
    sweep.add_argument("--drain", type=_duration, default=10.0, help=help_for(SweepSettings, "drain_s"))
    sweep.add_argument("--deadline", type=_duration, default=30.0, help=help_for(TargetSettings, "deadline_s"))
    sweep.add_argument("--payload", choices=PAYLOADS, default="fp32", help=help_for(WorkloadSettings, "payload"))
    sweep.add_argument("--images-per-request", type=int, default=1,
                       help=help_for(WorkloadSettings, "images_per_request"))
    sweep.add_argument("--distinct-requests", type=int, default=16,
                       help=help_for(WorkloadSettings, "distinct_requests"))
    sweep.add_argument("--seed", type=int, default=0, help=help_for(WorkloadSettings, "seed"))
    sweep.add_argument("--max-error-rate", type=float, default=0.0,
                       help=help_for(ValiditySettings, "max_error_rate"))
    sweep.add_argument("--out", type=Path, default=None, help="report folder (default: reports/<timestamp>)")
    sweep.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """Raises ValueError when a value is out of range."""
    return RunSettings(
        target=TargetSettings(
            target=args.target, model=args.model, model_version=args.model_version, deadline_s=args.deadline
        ),
        workload=WorkloadSettings(
            payload=args.payload, images_per_request=args.images_per_request,
            distinct_requests=args.distinct_requests, seed=args.seed,
        ),
        sweep=SweepSettings(
            concurrency=args.concurrency, window_s=args.duration, warmup_s=args.warmup, drain_s=args.drain
        ),
        validity=ValiditySettings(max_error_rate=args.max_error_rate),
        out_dir=args.out or Path("reports") / time.strftime("%Y%m%d-%H%M%S"),
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("locust").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    configure_logging(args.log_level)

    from loadgen.report.console import print_summary
    from loadgen.run import LoadRun, SetupError  # imports locust, which patches the process for gevent

    try:
        result = LoadRun(settings).run()
    except SetupError as error:
        logger.error("%s", error)
        return 1
    print_summary(result.report, result.markdown_path)
    return result.exit_code
