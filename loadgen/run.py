"""One object builds and runs a load test: describe the target, build the requests, run locust, write the report.

Lifecycle: ``run()`` → ``prepare()`` → ``execute()`` → ``finish()``. ``execute()`` runs the scenario's users in
this process, or (``processes`` > 1) as a locust master over worker processes it starts on this box, merging
their step state from locust's worker reports. SIGINT/SIGTERM during ``execute()`` stop issuing, wait (bounded)
for in-flight requests, count the rest ABANDONED, and the report is still written; a second signal stops waiting.
"""

from __future__ import annotations

# locust patches the process for gevent on import; it must come before grpc.
from locust.env import Environment  # isort: skip

import datetime
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import gevent
import gevent.event
import grpc

from loadgen.client import init_grpc_gevent, open_channel
from loadgen.distributed import MasterSteps
from loadgen.recorder import RunRecorder
from loadgen.report.files import write_reports
from loadgen.report.schema import build_report
from loadgen.scenarios.base import DRAIN_GRACE_S, StepShape
from loadgen.scenarios.build import shape_for, user_class_for
from loadgen.scrape import SCRAPE_TIMEOUT_S, StepScrapes
from loadgen.settings import RunSettings
from loadgen.users import Workload
from loadgen.worker import LocalWorkers
from loadgen.workload import PreparedWorkload, SetupError, prepare_workload

__all__ = ["LoadRun", "RunResult", "SetupError"]

logger = logging.getLogger(__name__)

RUN_LIMIT_MARGIN_S = 30.0
"""Slack, beyond the planned steps and their drains, before a run that has not ended is stopped."""
TICK_SLACK_S = 2.0
"""Per step: locust asks the shape about once a second, so each step can start and end up to a tick late."""
WORKERS_READY_S = 60.0
"""How long a distributed run waits for its workers to connect and prepare their requests."""
FINAL_REPORTS_S = 15.0
"""How long a distributed run waits for the workers' final reports."""
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
RUN_LIMIT = "run time limit"
"""``interrupted_by`` when the run outlived its planned length by more than the margin (exit code 1)."""


@dataclass(frozen=True)
class RunResult:
    report: dict
    json_path: Path
    markdown_path: Path
    interrupted_by: str | None

    @property
    def exit_code(self) -> int:
        if self.interrupted_by:
            return SIGNAL_EXIT_CODES.get(self.interrupted_by, 1)
        return 0 if self.report["valid"] else 1


class LoadRun:
    """A scenario against one model on one target, from settings to written report."""

    def __init__(self, settings: RunSettings, log_level: str = "info") -> None:
        self.settings = settings
        self.log_level = log_level
        self.recorder = RunRecorder()
        self.interrupted_by: str | None = None
        self._stopped = gevent.event.Event()
        self._interrupted = gevent.event.Event()
        self._abort = gevent.event.Event()
        self._signal_watchers: list = []
        self._previous_handlers: dict[int, object] = {}
        self._environment: Environment | None = None
        self._shape: StepShape | None = None
        self._master: MasterSteps | None = None
        self._channel: grpc.Channel | None = None
        self._prepared: PreparedWorkload | None = None
        self._started_at = ""
        self._started_ns = 0

    # --- lifecycle -----------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        self._capture_signals()
        try:
            self.prepare()
            self.execute()
        finally:
            self._restore_signals()
            if self._channel is not None:
                self._channel.close()
        return self.finish()

    def prepare(self) -> None:
        """Ask the target about the model and serialize the requests (each worker does so again for itself)."""
        init_grpc_gevent()
        self._prepared = prepare_workload(self.settings.target, self.settings.workload)
        if self.settings.processes == 1:
            self._channel = open_channel(self.settings.target.target, self._prepared.payloads.request_bytes)

    def execute(self) -> None:
        """Run the scenario in locust until its last step ends, or a signal stops it."""
        self._shape = shape_for(self.settings, self.recorder)
        target = self.settings.target
        if target.metrics_url:
            self._shape.scrapes = StepScrapes(target.metrics_url, target.model, target.model_version)
        try:
            if self.settings.processes == 1:
                self._execute_here()
            else:
                self._execute_distributed()
        finally:
            self._shape.wait_scrapes(SCRAPE_TIMEOUT_S + 1.0)

    def finish(self) -> RunResult:
        """Write report.json, then the files rendered from it."""
        duration_s = (time.perf_counter_ns() - self._started_ns) / 1e9 if self._started_ns else 0.0
        steps = self.recorder.steps
        if self._master is not None:
            steps = self._master.merged_steps(steps)
        report = build_report(
            steps=steps,
            settings=self.settings.to_dict(),
            target=self._prepared.target,
            model=self._prepared.model,
            payload=self._prepared.payload_description(self.settings.workload),
            scenario=self.settings.scenario,
            started_at=self._started_at,
            duration_s=duration_s,
            interrupted_by=self.interrupted_by,
            max_error_rate=self.settings.validity.max_error_rate,
            workers=self._master.describe() if self._master is not None else None,
            unix_s=self.recorder.unix_s,
            server=self._server_side(),
        )
        json_path, markdown_path = write_reports(report, self.settings.out_dir)
        return RunResult(report, json_path, markdown_path, self.interrupted_by)

    # --- in this process ------------------------------------------------------------------------------------

    def _execute_here(self) -> None:
        workload = Workload.over(self._channel, self._prepared, self.settings.target.deadline_s)
        drain_s = self.settings.steps.drain_s
        self._environment = Environment(
            user_classes=[user_class_for(self.settings, workload)], shape_class=self._shape, stop_timeout=drain_s,
            catch_exceptions=True,
        )
        self._environment.events.test_stop.add_listener(lambda **_: self._stopped.set())
        runner = self._environment.create_local_runner()
        self._mark_start()
        if self.interrupted_by is None:
            runner.start_shape()
            if not self._stopped.wait(timeout=self._run_limit_s()):
                self._stop_overrun()
                runner.stop()
            self._stopped.wait(timeout=drain_s + DRAIN_GRACE_S)
        runner.quit()

    # --- over worker processes ------------------------------------------------------------------------------

    def _execute_distributed(self) -> None:
        processes, drain_s = self.settings.processes, self.settings.steps.drain_s
        self._shape.hold_at_end = True  # the run stops the test once the workers' final reports are in
        self._environment = Environment(
            user_classes=[user_class_for(self.settings, None)], shape_class=self._shape, stop_timeout=drain_s,
            catch_exceptions=True,
        )
        runner = self._environment.create_master_runner("127.0.0.1", 0)
        self._master = MasterSteps(runner, self.settings.to_dict(), self.recorder.started_ns)
        workers = LocalWorkers(processes, runner.server.port, self.log_level)
        try:
            problems = self._master.wait_ready(processes, WORKERS_READY_S, cancel=self._interrupted)
            if problems:
                raise SetupError("workers not ready: " + "; ".join(problems))
            self._mark_start()
            self._master.started_ns = self._started_ns
            if self.interrupted_by is None:
                runner.start_shape()
                if not self._until_finished(self._run_limit_s()):
                    self._stop_overrun()
                    self._until_finished(drain_s + DRAIN_GRACE_S)
            self._master.finish(FINAL_REPORTS_S)
        finally:
            self._master.close()
            runner.quit()
            workers.stop()

    def _until_finished(self, timeout_s: float) -> bool:
        """Wait for the shape's last step (or a second signal); False on timeout."""
        gevent.wait([self._shape.finished, self._abort], timeout=timeout_s, count=1)
        return self._shape.finished.is_set() or self._abort.is_set()

    # --- helpers --------------------------------------------------------------------------------------------

    def _server_side(self) -> dict | None:
        """The scraped server metrics as the report takes them, or None when none were asked for."""
        scrapes = self._shape.scrapes if self._shape is not None else None
        if scrapes is None:
            return None
        return {"metrics_url": scrapes.url, "steps": scrapes.blocks, "warnings": scrapes.warnings}

    def _mark_start(self) -> None:
        self._started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._started_ns = time.perf_counter_ns()

    def _stop_overrun(self) -> None:
        logger.error("run did not end within %.0f s; stopping it", self._run_limit_s())
        self.interrupted_by = RUN_LIMIT
        self._shape.interrupt()

    def _run_limit_s(self) -> float:
        steps = self.settings.steps
        per_step = steps.warmup_s + steps.window_s + steps.drain_s + DRAIN_GRACE_S + TICK_SLACK_S
        return per_step * steps.step_count + RUN_LIMIT_MARGIN_S

    def _capture_signals(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.getsignal(signum)
            self._signal_watchers.append(gevent.signal_handler(signum, self._on_signal, signum))

    def _restore_signals(self) -> None:
        for watcher in self._signal_watchers:
            watcher.cancel()
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._signal_watchers.clear()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        runner = self._environment.runner if self._environment is not None else None
        if self.interrupted_by is not None:
            logger.warning("%s again: not waiting for in-flight requests", name)
            self._abort.set()
            if runner is not None and self._master is None:
                runner.user_greenlets.kill(block=False)
            return
        self.interrupted_by = name
        self._interrupted.set()
        logger.warning("%s: stopping; waiting up to %g s for in-flight requests", name, self.settings.steps.drain_s)
        if self._shape is not None:
            self._shape.interrupt()
        if runner is not None and self._master is None:  # a master's shape drains its workers' users itself
            gevent.spawn(runner.stop)
