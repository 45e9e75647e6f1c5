"""``ipsbench-load``: a thin shell that turns arguments into settings and runs :class:`loadgen.run.LoadRun`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from loadgen.arrivals import ARRIVALS
from loadgen.durations import parse_duration_s
from loadgen.settings import (
    PAYLOADS,
    RateSettings,
    RunSettings,
    StepSettings,
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


def _list_of(kind: type, what: str, example: str):
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} list {text!r}: use e.g. {example}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"at least one {what} is needed")
        return values

    return parse


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host, int(port)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments every load scenario takes."""
    parser.add_argument("--target", required=True, help=help_for(TargetSettings, "target"))
    parser.add_argument("--model", required=True, help=help_for(TargetSettings, "model"))
    parser.add_argument("--model-version", default="", help=help_for(TargetSettings, "model_version"))
    parser.add_argument("--duration", type=_duration, default=10.0, help=help_for(StepSettings, "window_s"))
    parser.add_argument("--warmup", type=_duration, default=2.0, help=help_for(StepSettings, "warmup_s"))
    parser.add_argument("--drain", type=_duration, default=10.0, help=help_for(StepSettings, "drain_s"))
    parser.add_argument("--deadline", type=_duration, default=30.0, help=help_for(TargetSettings, "deadline_s"))
    parser.add_argument("--metrics-url", default="", help=help_for(TargetSettings, "metrics_url"))
    parser.add_argument("--payload", choices=PAYLOADS, default="fp32", help=help_for(WorkloadSettings, "payload"))
    parser.add_argument("--images-per-request", type=int, default=1,
                        help=help_for(WorkloadSettings, "images_per_request"))
    parser.add_argument("--distinct-requests", type=int, default=16,
                        help=help_for(WorkloadSettings, "distinct_requests"))
    parser.add_argument("--seed", type=int, default=0, help=help_for(WorkloadSettings, "seed"))
    parser.add_argument("--max-error-rate", type=float, default=0.0,
                        help=help_for(ValiditySettings, "max_error_rate"))
    parser.add_argument("--processes", type=int, default=1, help=help_for(RunSettings, "processes"))
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: reports/<timestamp>)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-load", description="Load a KServe v2 gRPC inference server and report images/sec and latency."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sweep = commands.add_parser("sweep", help="closed-loop concurrency sweep", description=SweepSettings.__doc__)
    _add_run_arguments(sweep)
    sweep.add_argument("--concurrency", type=_list_of(int, "concurrency", "1,2,4"), default=(1, 2, 4),
                       help=help_for(SweepSettings, "concurrency"))
    rate = commands.add_parser("rate", help="open-loop arrivals at fixed rates", description=RateSettings.__doc__)
    _add_run_arguments(rate)
    rate.add_argument("--rate", type=_list_of(float, "rate", "20,40"), required=True,
                      help=help_for(RateSettings, "rates_per_s"))
    rate.add_argument("--arrival", choices=tuple(ARRIVALS), default="poisson", help=help_for(RateSettings, "arrival"))
    rate.add_argument("--max-in-flight", type=int, default=256, help=help_for(RateSettings, "max_in_flight"))
    worker = commands.add_parser(
        "worker", help="a locust worker of a distributed run (a run with --processes starts its own)",
        description="Connect to an ipsbench-load master, take the run's settings from it, and send its load.",
    )
    worker.add_argument("--master", type=_host_port, required=True, help="the master's host:port")
    worker.add_argument("--exit-with-parent", action="store_true",
                        help="quit when the process that started this worker exits (how --processes starts them)")
    worker.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """Raises ValueError when a value is out of range."""
    steps = {"window_s": args.duration, "warmup_s": args.warmup, "drain_s": args.drain}
    return RunSettings(
        target=TargetSettings(
            target=args.target, model=args.model, model_version=args.model_version, deadline_s=args.deadline,
            metrics_url=args.metrics_url,
        ),
        workload=WorkloadSettings(
            payload=args.payload, images_per_request=args.images_per_request,
            distinct_requests=args.distinct_requests, seed=args.seed,
        ),
        sweep=SweepSettings(concurrency=args.concurrency, **steps) if args.command == "sweep" else None,
        rate=RateSettings(
            rates_per_s=args.rate, arrival=args.arrival, max_in_flight=args.max_in_flight, **steps
        ) if args.command == "rate" else None,
        validity=ValiditySettings(max_error_rate=args.max_error_rate),
        processes=args.processes,
        out_dir=args.out or Path("reports") / time.strftime("%Y%m%d-%H%M%S"),
    )


def configure_logging(level: str, worker: bool = False) -> None:
    who = f" worker {os.getpid()}" if worker else ""
    logging.basicConfig(
        level=level.upper(), format=f"%(asctime)s %(levelname)s{who} %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("locust").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker":
        configure_logging(args.log_level, worker=True)
        from loadgen.worker import run_worker  # imports locust, which patches the process for gevent

        return run_worker(*args.master, exit_with_parent=args.exit_with_parent)
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    configure_logging(args.log_level)

    from loadgen.report.console import print_summary
    from loadgen.run import LoadRun, SetupError  # imports locust, which patches the process for gevent

    try:
        result = LoadRun(settings, log_level=args.log_level).run()
    except SetupError as error:
        logger.error("%s", error)
        return 1
    print_summary(result.report, result.markdown_path)
    return result.exit_code
