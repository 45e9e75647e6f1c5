"""``ipsbench-load``: a thin shell that turns arguments into settings and runs :class:`ipsbench.loadgen.run.LoadRun`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from ipsbench.loadgen.arrivals import ARRIVALS, read_trace
from ipsbench.server.durations import parse_duration_s
from ipsbench.loadgen.settings import (
    MAX_TRACE_ARRIVALS,
    PAYLOADS,
    SEARCH_KINDS,
    RateSettings,
    RunSettings,
    SearchSettings,
    StepSettings,
    SweepSettings,
    TargetSettings,
    ValiditySettings,
    WorkloadSettings,
    help_for,
    ramp_levels,
    spike_levels,
)

logger = logging.getLogger("ipsbench.loadgen")


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


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().lower(), value


def _objective(text: str) -> str:
    from ipsbench.loadgen.slo import parse_objective

    try:
        parse_objective(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.strip()


def _add_common_arguments(parser: argparse.ArgumentParser, *, duration: bool = True) -> None:
    """Arguments every load scenario takes."""
    parser.add_argument("--target", required=True, help=help_for(TargetSettings, "target"))
    parser.add_argument("--model", required=True, help=help_for(TargetSettings, "model"))
    parser.add_argument("--model-version", default="", help=help_for(TargetSettings, "model_version"))
    if duration:
        parser.add_argument("--duration", type=_duration, default=10.0, help=help_for(StepSettings, "window_s"))
    parser.add_argument("--warmup", type=_duration, default=2.0, help=help_for(StepSettings, "warmup_s"))
    parser.add_argument("--drain", type=_duration, default=10.0, help=help_for(StepSettings, "drain_s"))
    parser.add_argument("--deadline", type=_duration, default=30.0, help=help_for(TargetSettings, "deadline_s"))
    parser.add_argument("--metrics-url", default="", help=help_for(TargetSettings, "metrics_url"))
    parser.add_argument("--payload", choices=PAYLOADS, default="fp32", help=help_for(WorkloadSettings, "payload"))
    parser.add_argument("--images-per-request", type=int, default=None,
                        help=help_for(WorkloadSettings, "images_per_request") + " (default 1; offline: 8)")
    parser.add_argument("--distinct-requests", type=int, default=16,
                        help=help_for(WorkloadSettings, "distinct_requests"))
    parser.add_argument("--seed", type=int, default=0, help=help_for(WorkloadSettings, "seed"))
    parser.add_argument("--images", default="", metavar="DIR", help=help_for(WorkloadSettings, "images_dir"))
    parser.add_argument("--cache-dir", default="", help=help_for(WorkloadSettings, "cache_dir"))
    parser.add_argument("--accuracy-every", type=int, default=0, metavar="N",
                        help=help_for(WorkloadSettings, "accuracy_every"))
    parser.add_argument("--max-error-rate", type=float, default=0.0,
                        help=help_for(ValiditySettings, "max_error_rate"))
    parser.add_argument("--latency-slo", type=_objective, action="append", default=[], metavar="pNN=DURATION",
                        help=help_for(ValiditySettings, "latency_slo"))
    parser.add_argument("--processes", type=int, default=1, help=help_for(RunSettings, "processes"))
    _add_distributed_arguments(parser)
    parser.add_argument("--engine-bench", default="", metavar="FILE", help=help_for(RunSettings, "engine_bench"))
    parser.add_argument("--request-log", default="", metavar="PATH", help=help_for(RunSettings, "request_log"))
    parser.add_argument("--tls-ca", default="", metavar="FILE", help=help_for(TargetSettings, "tls_ca"))
    parser.add_argument("--tls-cert", default="", metavar="FILE", help=help_for(TargetSettings, "tls_cert"))
    parser.add_argument("--tls-key", default="", metavar="FILE", help=help_for(TargetSettings, "tls_key"))
    parser.add_argument("--header", type=_header, action="append", default=[], metavar="KEY=VALUE",
                        help=help_for(TargetSettings, "headers"))
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: reports/<timestamp>)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def _add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote-workers", type=int, default=0, metavar="N",
                        help=help_for(RunSettings, "remote_workers"))
    parser.add_argument("--master-bind", type=_host_port, default=None, metavar="HOST:PORT",
                        help=help_for(RunSettings, "master_bind"))


def _add_stability_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stability", type=float, default=0.10, help=help_for(SweepSettings, "stability"))
    parser.add_argument("--max-trials", type=int, default=10, help=help_for(SweepSettings, "max_trials"))


def _add_open_loop_arguments(parser: argparse.ArgumentParser, arrival: bool = True) -> None:
    if arrival:
        parser.add_argument("--arrival", choices=tuple(ARRIVALS), default="poisson",
                            help=help_for(RateSettings, "arrival"))
    parser.add_argument("--max-in-flight", type=int, default=256, help=help_for(RateSettings, "max_in_flight"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-load", description="Load a KServe v2 gRPC inference server and report images/sec and latency.",
        epilog="Exit codes: 0 valid and every SLO met; 1 SLO FAIL or UNSTABLE; 2 INVALID (accounting or errors, "
               "or the run could not start) and usage errors; 130 SIGINT, 143 SIGTERM (reports still written).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sweep = commands.add_parser("sweep", help="closed-loop concurrency sweep", description=SweepSettings.__doc__)
    _add_common_arguments(sweep)
    sweep.add_argument("--concurrency", type=_list_of(int, "concurrency", "1,2,4"), default=(1, 2, 4),
                       help=help_for(SweepSettings, "concurrency"))
    _add_stability_arguments(sweep)
    offline = commands.add_parser("offline", help="maximum throughput: large requests, closed loop",
                                  description="Maximum throughput with large requests (MLPerf Offline).")
    _add_common_arguments(offline)
    offline.add_argument("--concurrency", type=_list_of(int, "concurrency", "4"), default=(4,),
                         help=help_for(SweepSettings, "concurrency"))
    _add_stability_arguments(offline)
    single = commands.add_parser("single-stream", help="one request in flight; p90 as MLPerf reports it",
                                 description="One request at a time (MLPerf SingleStream); its p90 is the figure.")
    _add_common_arguments(single)
    _add_stability_arguments(single)
    ramp = commands.add_parser("ramp", help="closed-loop concurrency ramp (soak)",
                               description="Concurrency from --from to --to in --steps levels, each a measured step.")
    _add_common_arguments(ramp)
    ramp.add_argument("--from", dest="ramp_from", type=int, default=1, help="first concurrency level")
    ramp.add_argument("--to", dest="ramp_to", type=int, required=True, help="last (peak) concurrency level")
    ramp.add_argument("--steps", dest="ramp_steps", type=int, default=4, help="levels, the first and last included")
    ramp.add_argument("--max-trials", type=int, default=1, help=help_for(SweepSettings, "max_trials"))
    ramp.add_argument("--stability", type=float, default=0.10, help=help_for(SweepSettings, "stability"))
    spike = commands.add_parser("spike", help="baseline, spike, recovery (soak)",
                                description="A baseline concurrency, a spike, then the baseline again.")
    _add_common_arguments(spike)
    spike.add_argument("--base", type=int, default=1, help="baseline concurrency")
    spike.add_argument("--spike", type=int, required=True, help="concurrency during the spike")
    spike.add_argument("--max-trials", type=int, default=1, help=help_for(SweepSettings, "max_trials"))
    spike.add_argument("--stability", type=float, default=0.10, help=help_for(SweepSettings, "stability"))
    rate = commands.add_parser("rate", help="open-loop arrivals at fixed rates", description=RateSettings.__doc__)
    _add_common_arguments(rate)
    rate.add_argument("--rate", type=_list_of(float, "rate", "20,40"), required=True,
                      help=help_for(RateSettings, "rates_per_s"))
    _add_open_loop_arguments(rate)
    trace = commands.add_parser("trace", help="replay a file of inter-arrival times (open loop)",
                                description="Open-loop arrivals replayed from a trace; the measured window is the "
                                            "trace after the warm-up.")
    _add_common_arguments(trace, duration=False)
    trace.add_argument("--trace", required=True, metavar="FILE", help=help_for(RateSettings, "interarrivals_s"))
    _add_open_loop_arguments(trace, arrival=False)
    slo = commands.add_parser("slo", help="search the highest rate or concurrency meeting the SLO",
                              description=SearchSettings.__doc__)
    _add_common_arguments(slo)
    slo.add_argument("--search", choices=SEARCH_KINDS, default="rate", help=help_for(SearchSettings, "search"))
    slo.add_argument("--low", type=float, required=True, help=help_for(SearchSettings, "low"))
    slo.add_argument("--high", type=float, required=True, help=help_for(SearchSettings, "high"))
    slo.add_argument("--max-steps", type=int, default=8, help=help_for(SearchSettings, "max_steps"))
    slo.add_argument("--resolution", type=float, default=0.05, help=help_for(SearchSettings, "resolution"))
    _add_open_loop_arguments(slo)
    compare = commands.add_parser("compare", help="differences between two report.json files", add_help=False)
    compare.add_argument("rest", nargs=argparse.REMAINDER)
    ui = commands.add_parser("ui", help="locust's web UI with ipsbench's exact percentiles and images/sec",
                             description="An interactive run in locust's web UI; an extra tab shows ipsbench's "
                                         "exact percentiles and images/sec.")
    ui.add_argument("--target", required=True, help=help_for(TargetSettings, "target"))
    ui.add_argument("--model", required=True, help=help_for(TargetSettings, "model"))
    ui.add_argument("--web-host", default="127.0.0.1", help="address of the web UI")
    ui.add_argument("--web-port", type=int, default=8089, help="port of the web UI")
    ui.add_argument("--payload", choices=PAYLOADS, default="fp32", help=help_for(WorkloadSettings, "payload"))
    ui.add_argument("--images-per-request", type=int, default=1,
                    help=help_for(WorkloadSettings, "images_per_request"))
    ui.add_argument("--deadline", type=_duration, default=30.0, help=help_for(TargetSettings, "deadline_s"))
    _add_distributed_arguments(ui)
    ui.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    worker = commands.add_parser(
        "worker", help="a locust worker of a distributed run (a run with --processes starts its own)",
        description="Connect to an ipsbench-load master, take the run's settings from it, and send its load.",
    )
    worker.add_argument("--master", type=_host_port, required=True, help="the master's host:port")
    worker.add_argument("--exit-with-parent", action="store_true",
                        help="quit when the process that started this worker exits (how --processes starts them)")
    worker.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def _scenario_settings(args: argparse.Namespace) -> StepSettings:
    """The scenario's step settings from its arguments (ValueError when out of range)."""
    command = args.command
    timing = {"window_s": getattr(args, "duration", 10.0), "warmup_s": args.warmup, "drain_s": args.drain}
    stability = {"stability": args.stability, "max_trials": args.max_trials} if hasattr(args, "max_trials") else {}
    if command in ("sweep", "offline"):
        return SweepSettings(concurrency=args.concurrency, **stability, **timing)
    if command == "single-stream":
        return SweepSettings(concurrency=(1,), **stability, **timing)
    if command == "ramp":
        if not 1 <= args.ramp_steps <= 100:
            raise ValueError("ramp steps must be in [1, 100]")
        levels, phases = ramp_levels(args.ramp_from, args.ramp_to, args.ramp_steps)
        return SweepSettings(concurrency=levels, phases=phases, **stability, **timing)
    if command == "spike":
        levels, phases = spike_levels(args.base, args.spike)
        return SweepSettings(concurrency=levels, phases=phases, **stability, **timing)
    if command == "rate":
        return RateSettings(rates_per_s=args.rate, arrival=args.arrival, max_in_flight=args.max_in_flight, **timing)
    if command == "trace":
        try:
            interarrivals = read_trace(args.trace, MAX_TRACE_ARRIVALS)
        except OSError as error:
            raise ValueError(f"--trace {args.trace}: {error.strerror}") from None
        total_s = sum(interarrivals)
        if total_s <= args.warmup:
            raise ValueError(f"the trace lasts {total_s:g} s, not longer than the {args.warmup:g} s warm-up")
        timing["window_s"] = total_s - args.warmup + TRACE_END_SLACK_S  # the last arrival falls inside
        return RateSettings(rates_per_s=(round(len(interarrivals) / total_s, 3),), arrival="trace",
                            interarrivals_s=interarrivals, max_in_flight=args.max_in_flight, **timing)
    return SearchSettings(search=args.search, low=args.low, high=args.high, max_steps=args.max_steps,
                          resolution=args.resolution, arrival=args.arrival, max_in_flight=args.max_in_flight, **timing)


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """Raises ValueError when a value is out of range."""
    images_per_request = args.images_per_request or (8 if args.command == "offline" else 1)
    master_bind = f"{args.master_bind[0]}:{args.master_bind[1]}" if args.master_bind else ""
    return RunSettings(
        target=TargetSettings(
            target=args.target, model=args.model, model_version=args.model_version, deadline_s=args.deadline,
            metrics_url=args.metrics_url, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
            headers=tuple(args.header),
        ),
        workload=WorkloadSettings(
            payload=args.payload, images_per_request=images_per_request,
            distinct_requests=args.distinct_requests, seed=args.seed, images_dir=args.images,
            cache_dir=args.cache_dir, accuracy_every=args.accuracy_every,
        ),
        validity=ValiditySettings(max_error_rate=args.max_error_rate, latency_slo=tuple(args.latency_slo)),
        scenario=args.command,
        steps=_scenario_settings(args),
        processes=args.processes,
        remote_workers=args.remote_workers,
        master_bind=master_bind,
        engine_bench=args.engine_bench,
        request_log=args.request_log,
        out_dir=args.out or Path("reports") / time.strftime("%Y%m%d-%H%M%S"),
    )


def configure_logging(level: str, worker: bool = False) -> None:
    who = f" worker {os.getpid()}" if worker else ""
    logging.basicConfig(
        level=level.upper(), format=f"%(asctime)s %(levelname)s{who} %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("locust").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


TRACE_END_SLACK_S = 0.001
SETUP_FAILED_EXIT_CODE = 2
"""The run could not start (target unreachable, model unfit): no valid result, like an INVALID run."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:  # its own command line, options included
        return _compare(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker":
        configure_logging(args.log_level, worker=True)
        from ipsbench.loadgen.worker import run_worker  # imports locust, which patches the process for gevent

        return run_worker(*args.master, exit_with_parent=args.exit_with_parent)
    if args.command == "ui":
        configure_logging(args.log_level)
        from ipsbench.loadgen.ui import run_ui  # imports locust, which patches the process for gevent

        return run_ui(args)
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    configure_logging(args.log_level)

    from ipsbench.loadgen.report.console import print_summary
    from ipsbench.loadgen.run import LoadRun, SetupError  # imports locust, which patches the process for gevent

    try:
        result = LoadRun(settings, log_level=args.log_level).run()
    except SetupError as error:
        logger.error("%s", error)
        return SETUP_FAILED_EXIT_CODE
    print_summary(result.report, result.markdown_path)
    return result.exit_code


def _compare(argv: list[str]) -> int:
    """``ipsbench-load compare A.json B.json [--out FILE]``: the report renderer's comparison."""
    try:
        from ipsbench.loadgen.report.compare import main as compare_main
    except ImportError as error:
        print(f"ipsbench-load compare is not available: {error}", file=sys.stderr)
        return SETUP_FAILED_EXIT_CODE
    return compare_main(argv)
