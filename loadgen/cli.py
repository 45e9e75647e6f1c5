"""``ipsbench-load``: a thin shell that turns arguments into settings and runs :class:`ipsbench.loadgen.run.LoadRun`.

Every scenario command comes from the scenario table (:mod:`ipsbench.loadgen.scenarios.catalog`) and every option
from a settings field (:mod:`ipsbench.loadgen.settings`, the scenario's own settings class): nothing here restates
a default. Importing this module does not import locust (which patches the process for gevent).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ipsbench.loadgen.sample_plan import asked_rates, judged_windows, plan_lines, sample_plan
from ipsbench.loadgen.scenarios.base import Scenario
from ipsbench.loadgen.scenarios.catalog import SCENARIOS
from ipsbench.loadgen.settings import (
    UI_SCENARIO,
    RunSettings,
    TargetSettings,
    UiLoopSettings,
    UiSettings,
    ValiditySettings,
    WorkloadSettings,
    host_port,
)
from ipsbench.loadgen.slo import parse_objective
from ipsbench.server.flags import add_options, values

logger = logging.getLogger("ipsbench.loadgen")

LOG_LEVELS = ("debug", "info", "warning", "error")
SETUP_FAILED_EXIT_CODE = 2
"""The run could not start (target unreachable, model unfit): no valid result, like an INVALID run."""
UI_WORKLOAD_OPTIONS = ("payload", "images_per_request", "distinct_requests", "seed")
UI_LOOP_OPTIONS = ("rate_per_s", "arrival", "max_in_flight", "drain_s")
UI_VALIDITY_OPTIONS = ("max_error_rate",)
UI_RUN_OPTIONS = ("out_dir", "remote_workers", "master_bind")


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)


def _add_scenario(commands, scenario: Scenario) -> None:
    parser = commands.add_parser(scenario.name, help=scenario.help, description=scenario.description)
    defaults = scenario.defaults
    add_options(parser.add_argument_group("target"), TargetSettings, defaults=defaults)
    add_options(parser.add_argument_group("requests"), WorkloadSettings, defaults=defaults)
    steps = parser.add_argument_group(f"{scenario.name} steps")
    add_options(steps, scenario.settings, skip=scenario.skip, defaults=defaults)
    if scenario.add_arguments is not None:
        scenario.add_arguments(steps)
    add_options(parser.add_argument_group("validity"), ValiditySettings, defaults=defaults)
    run = parser.add_argument_group("run")
    add_options(run, RunSettings, defaults=defaults)
    run.add_argument("--plan-only", action="store_true",
                     help="say the run's plan (its steps, the samples each objective needs and how long each step "
                          "measures to hold them) and exit, sending nothing")
    _add_log_level(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-load", description="Load a KServe v2 gRPC inference server and report images/sec and latency.",
        epilog="Exit codes: 0 valid and every SLO met; 1 SLO FAIL or UNSTABLE; 2 INVALID (accounting or errors, "
               "or the run could not start, --out unwritable included) and usage errors; 3 the report could not be "
               "written into --out at the end (written to the folder named on stderr instead); 4 INCONCLUSIVE (a "
               "step too short of samples to judge its percentile); 130 SIGINT, 143 SIGTERM (reports still "
               "written).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for scenario in SCENARIOS.values():
        _add_scenario(commands, scenario)
    compare = commands.add_parser("compare", help="differences between two report.json files; with --fail-on, a "
                                              "regression gate", add_help=False)
    compare.add_argument("rest", nargs=argparse.REMAINDER)
    _add_ui_command(commands)
    worker = commands.add_parser(
        "worker", help="a locust worker of a distributed run (a run with --processes starts its own)",
        description="Connect to an ipsbench-load master, take the run's settings from it, and send its load.",
    )
    worker.add_argument("--master", type=host_port, required=True, help="the master's host:port")
    worker.add_argument("--exit-with-parent", action="store_true",
                        help="quit when the process that started this worker exits (how --processes starts them)")
    _add_log_level(worker)
    return parser


def _add_ui_command(commands) -> None:
    ui = commands.add_parser("ui", help="locust's web UI with ipsbench's exact percentiles and images/sec",
                             description="An interactive run in locust's web UI; an extra tab shows ipsbench's "
                                         "exact percentiles and images/sec. With --out each test started in the UI "
                                         "is a step of the report, written there after each test and when the "
                                         "process ends (Ctrl-C and SIGTERM included; no test started: no report).")
    add_options(ui.add_argument_group("target"), TargetSettings)
    add_options(ui.add_argument_group("requests"), WorkloadSettings, only=UI_WORKLOAD_OPTIONS)
    add_options(ui.add_argument_group("tests"), UiLoopSettings, only=UI_LOOP_OPTIONS)
    add_options(ui.add_argument_group("validity"), ValiditySettings, only=UI_VALIDITY_OPTIONS)
    add_options(ui.add_argument_group("web UI"), UiSettings)
    add_options(ui.add_argument_group("run"), RunSettings, only=UI_RUN_OPTIONS)
    _add_log_level(ui)


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """The run's settings from a scenario command's arguments; ValueError when a value is out of range."""
    scenario = SCENARIOS[args.command]
    return RunSettings(
        target=TargetSettings(**values(args, TargetSettings)),
        workload=WorkloadSettings(**values(args, WorkloadSettings)),
        validity=ValiditySettings(**values(args, ValiditySettings)),
        scenario=scenario.name,
        steps=scenario.from_args(args),
        **values(args, RunSettings),
    )


def run_plan_lines(settings: RunSettings) -> list[str]:
    """``--plan-only``: the run's steps and timing, then its sample plan, in sentences."""
    steps, validity = settings.steps, settings.validity
    objectives = [parse_objective(text) for text in validity.latency_slo]
    grows = objectives and judged_windows(steps) == 1 and steps.longest_window_s > steps.window_s
    measured = f"{steps.window_s:g} s measured" + (f" (up to {steps.longest_window_s:g} s)" if grows else "")
    if judged_windows(steps) > 1:
        measured = f"{steps.windows_per_step} windows of {steps.window_s:g} s at most (stability)"
    lines = [f"{settings.scenario}: up to {steps.step_count} steps, each {steps.warmup_s:g} s warm-up + {measured} + "
             f"up to {steps.drain_s:g} s drain"]
    if rates := asked_rates(steps):
        lines.append("rates: " + ", ".join(f"{rate:g}" for rate in rates) + " requests/s"
                     + (" (the search's lower end)" if getattr(steps, "search", None) == "rate" else ""))
    lines += plan_lines(sample_plan(objectives, steps, validity.sample_rule))
    if not objectives:
        lines.append("no --latency-slo: each step measures for --duration")
    return lines


def configure_logging(level: str, worker: bool = False) -> None:
    who = f" worker {os.getpid()}" if worker else ""
    logging.basicConfig(
        level=level.upper(), format=f"%(asctime)s %(levelname)s{who} %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("locust").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:  # its own command line, options included
        return _compare(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker":
        return _worker(args)
    if args.command == "ui":
        return _ui(parser, args)
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.plan_only:
        print("\n".join(run_plan_lines(settings)))
        return 0
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


def _worker(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, worker=True)
    from ipsbench.loadgen.worker import run_worker  # imports locust, which patches the process for gevent

    host, _, port = args.master.rpartition(":")
    return run_worker(host, int(port), exit_with_parent=args.exit_with_parent)


def _ui(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        settings = RunSettings(
            target=TargetSettings(**values(args, TargetSettings)),
            workload=WorkloadSettings(**values(args, WorkloadSettings, only=UI_WORKLOAD_OPTIONS)),
            validity=ValiditySettings(**values(args, ValiditySettings, only=UI_VALIDITY_OPTIONS)),
            scenario=UI_SCENARIO,
            steps=UiLoopSettings(**values(args, UiLoopSettings, only=UI_LOOP_OPTIONS)),
            **values(args, RunSettings, only=UI_RUN_OPTIONS),
        )
        ui = UiSettings(**values(args, UiSettings))
    except ValueError as error:
        parser.error(str(error))
    configure_logging(args.log_level)
    from ipsbench.loadgen.ui import run_ui  # imports locust, which patches the process for gevent

    return run_ui(ui, settings, reports=args.out_dir is not None)  # an exploring session may want none


def _compare(argv: list[str]) -> int:
    """``ipsbench-load compare A.json B.json [--out FILE] [--fail-on CLAUSES [--summary FILE]]``: the report
    renderer's comparison, and with ``--fail-on`` its regression gate (exit 1 on a regression)."""
    try:
        from ipsbench.loadgen.report.compare import main as compare_main
    except ImportError as error:
        print(f"ipsbench-load compare is not available: {error}", file=sys.stderr)
        return SETUP_FAILED_EXIT_CODE
    return compare_main(argv)
