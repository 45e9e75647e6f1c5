"""One object builds and runs a load test: describe the target, build the requests, run locust, write the report.

Lifecycle: ``run()`` → ``prepare()`` → ``execute()`` → ``finish()``. ``execute()`` runs the scenario's users in
this process, or (``processes`` > 1) as a locust master over worker processes it starts on this box, merging
their step state from locust's worker reports. SIGINT/SIGTERM during ``execute()`` stop issuing, wait (bounded)
for in-flight requests, count the rest ABANDONED, and the report is still written; a second signal stops waiting.
While it runs, a partial ``report.json`` (status ``incomplete``, verdict ``INCOMPLETE``) is rewritten every few
seconds, so a run killed outright still leaves its results so far; the next run into the same folder keeps that file
aside. ``--out`` is checked before anything is sent; if writing there fails at the end anyway, the report goes to a
fallback folder (:mod:`ipsbench.loadgen.report.destination`) and the exit code is 3.
"""

from __future__ import annotations

# locust patches the process for gevent on import; it must come first.
from ipsbench.loadgen.environment import gevent_delivery, load_environment, user_class_for  # isort: skip

import datetime
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gevent
import gevent.event
from locust.env import Environment

from ipsbench.loadgen.distributed import MasterSteps, announce_steps
from ipsbench.loadgen.progress import Progress
from ipsbench.loadgen.recorder import RunRecorder
from ipsbench.loadgen.report.build import RunFacts, build_report
from ipsbench.loadgen.report.destination import (
    DestinationError,
    check_out_dir,
    keep_unfinished_report,
    write_reports_somewhere,
)
from ipsbench.loadgen.report.schema import VERDICT_EXIT_CODES, write_report
from ipsbench.loadgen.request_log import RequestLogError, describe, open_request_log
from ipsbench.loadgen.sample_plan import plan_lines, sample_plan
from ipsbench.loadgen.scenarios.catalog import SCENARIOS
from ipsbench.loadgen.scrape import SCRAPE_TIMEOUT_S, StepScrapes
from ipsbench.loadgen.client import is_local_target
from ipsbench.loadgen.senders import off_the_hub, prompt_senders
from ipsbench.loadgen.settings import RunSettings
from ipsbench.loadgen.shape import DRAIN_GRACE_S, StepShape
from ipsbench.loadgen.slo import parse_objective
from ipsbench.loadgen.stability import DEFAULT_STABILITY_METRICS
from ipsbench.loadgen.users import Workload
from ipsbench.loadgen.watchers import SampleKeeper, StabilityJudge, WindowScraper
from ipsbench.loadgen.worker import LocalWorkers
from ipsbench.loadgen.workload import PreparedWorkload, SetupError, prepare_workload
from ipsbench.server.signals import capture_signals

__all__ = ["LoadRun", "RunResult", "SetupError"]

logger = logging.getLogger(__name__)

RUN_LIMIT_MARGIN_S = 30.0
"""Slack, beyond the planned steps and their drains, before a run that has not ended is stopped."""
TICK_SLACK_S = 2.0
"""Per step: locust asks the shape about once a second, so each step can start and end up to a tick late."""
WORKERS_READY_S = 60.0
"""How long a distributed run waits for its workers to connect and prepare their requests."""
REMOTE_WORKERS_READY_S = 600.0
"""The same for workers from other hosts, which someone has to start."""
FINAL_REPORTS_S = 15.0
"""How long a distributed run waits for the workers' final reports."""
FLUSH_INTERVAL_S = 2.0
"""How often the partial report.json is rewritten while the run goes on (at most 5 s apart)."""
DEFAULT_MASTER_PORT = 5557
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
REPORT_NOT_WRITTEN_EXIT_CODE = 3
"""The report could not be written into ``--out`` and went to the fallback folder named on stderr (first of all
exit codes: whatever the verdict, the report is not where it was asked for)."""
RUN_LIMIT = "run time limit"
"""``interrupted_by`` when the run outlived its planned length by more than the margin (exit code 1)."""


@dataclass(frozen=True)
class RunResult:
    report: dict
    json_path: Path | None
    markdown_path: Path | None
    interrupted_by: str | None
    unwritten: str | None = None
    """Why the report is not in ``--out`` (None: it is)."""

    @property
    def exit_code(self) -> int:
        if self.unwritten:
            return REPORT_NOT_WRITTEN_EXIT_CODE
        if self.interrupted_by:
            return SIGNAL_EXIT_CODES.get(self.interrupted_by, 1)
        return VERDICT_EXIT_CODES[self.report["verdict"]]


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
        self._environment: Environment | None = None
        self._shape: StepShape | None = None
        self._judge: StabilityJudge | None = None
        self._keeper: SampleKeeper | None = None
        self._scraper: WindowScraper | None = None
        self._master: MasterSteps | None = None
        self._prepared: PreparedWorkload | None = None
        self._started_at = ""
        self._started_ns = 0
        self._engine: dict | None = None
        self._flusher: gevent.Greenlet | None = None
        self._progress: Progress | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        try:
            with capture_signals(self._on_signal, gevent_delivery), prompt_senders():
                self.prepare()
                self.execute()
        finally:
            self.recorder.close_request_log()  # every request has its row by now, abandoned ones included
            if self._prepared is not None:
                off_the_hub(self._prepared.release)  # shared-memory regions, whatever ended the run
        return self.finish()

    def prepare(self) -> None:
        """Ask the target about the model and serialize the requests (each worker does so again for itself), and
        open the per-request log where this process records requests (a master's workers open their own). Checks
        ``--out`` first, before anything is asked or sent."""
        try:
            check_out_dir(self.settings.out_dir)
        except DestinationError as error:
            raise SetupError(str(error)) from error
        target = self.settings.target.target
        if self.settings.workload.shared_memory != "none" and not off_the_hub(is_local_target, target):
            raise SetupError(
                f"--shared-memory {self.settings.workload.shared_memory} needs a target on this host (a loopback "
                f"address), but {target} is not: shared memory cannot reach another machine"
            )
        self._engine = read_engine_bench(self.settings.engine_bench)
        self._prepared = off_the_hub(
            prepare_workload, self.settings.target, self.settings.workload, not self.settings.distributed
        )
        keep_unfinished_report(self.settings.out_dir)
        if self.settings.request_log and not self.settings.distributed:
            try:
                self.recorder.request_log = open_request_log(
                    self.settings.request_log, self.settings.workload.images_per_request
                )
            except RequestLogError as error:
                raise SetupError(str(error)) from error

    def execute(self) -> None:
        """Run the scenario in locust until its last step ends, or a signal stops it."""
        planner = SCENARIOS[self.settings.scenario].planner(self.settings)
        validity, steps = self.settings.validity, self.settings.steps
        objectives = [parse_objective(text) for text in validity.latency_slo]
        for line in plan_lines(sample_plan(objectives, steps, validity.sample_rule)):
            logger.info("%s", line)
        self._shape = StepShape(planner, self.recorder, drain_s=steps.drain_s)
        self._judge = StabilityJudge(self._shape)
        self._keeper = SampleKeeper(self._shape, objectives, validity.sample_rule, steps.longest_window_s,
                                    validity.max_error_rate)
        target = self.settings.target
        if target.metrics_url:
            scrapes = StepScrapes(target.metrics_url, target.model, target.model_version)
            self._scraper = WindowScraper(self._shape, scrapes)
        self._flusher = gevent.spawn(self._flush_periodically)
        if sys.stdout.isatty():
            self._progress = Progress(self._shape, self._live_step)
        try:
            if not self.settings.distributed:
                self._execute_here()
            else:
                self._execute_distributed()
        finally:
            self._flusher.kill(block=True)
            if self._progress is not None:
                self._progress.stop()
            if self._scraper is not None:
                self._scraper.wait(SCRAPE_TIMEOUT_S + 1.0)
            self._judge.stop()
            self._keeper.stop()

    def finish(self) -> RunResult:
        """Write report.json, then the files rendered from it (elsewhere if ``--out`` cannot take them)."""
        report = self.build(running=False)
        written = write_reports_somewhere(report, self.settings.out_dir)
        return RunResult(report, written.json_path, written.markdown_path, self.interrupted_by, written.failure)

    def build(self, running: bool) -> dict:
        """The report document as things stand (``running``: a partial one written while the run goes on)."""
        duration_s = (time.perf_counter_ns() - self._started_ns) / 1e9 if self._started_ns else 0.0
        steps = self.recorder.steps
        if self._master is not None:
            steps = self._master.merged_steps(steps)
        validity, shape = self.settings.validity, self._shape
        search = shape.planner.search_result() if shape is not None else None
        judged = bool(validity.latency_slo) or search is not None
        workers = self._master.describe() if self._master is not None else None
        return build_report(steps, RunFacts(
            settings=self.settings.to_report(),
            target=self._prepared.target,
            model=self._prepared.model,
            payload=self._prepared.payload_description(self.settings.workload),
            scenario=self.settings.scenario,
            started_at=self._started_at,
            duration_s=duration_s,
            interrupted_by=self.interrupted_by,
            max_error_rate=validity.max_error_rate,
            workers=workers or [],
            unix_s=self.recorder.unix_s,
            server=self._server_side(),
            objectives=[parse_objective(text) for text in validity.latency_slo] if judged else None,
            search=search,
            tolerance=getattr(self.settings.steps, "stability", None),
            sample_rule=validity.sample_rule,
            stability_metrics=getattr(self.settings.steps, "stability_metrics", DEFAULT_STABILITY_METRICS),
            engine=self._engine,
            running=running,
            request_log=self._request_log_entry(workers),
            simulated=self._prepared.simulated,
        ))

    def _request_log_entry(self, workers: list[dict] | None) -> dict | None:
        path = self.settings.request_log
        if not path:
            return None
        return describe(path, None if workers is None else [worker["index"] for worker in workers])

    def _flush_periodically(self) -> None:
        failed = ""  # said once per distinct failure, not every few seconds
        while True:
            gevent.sleep(FLUSH_INTERVAL_S)
            if not self._started_ns:
                continue
            try:
                write_report(self.build(running=True), self.settings.out_dir)
                failed = ""
            except OSError as error:  # a failed flush must not end the run; the final report is tried anyway
                if str(error) != failed:
                    logger.warning("could not write the partial report into %s: %s; the run goes on",
                                   self.settings.out_dir, error)
                failed = str(error)
            except Exception:
                logger.exception("could not write the partial report")

    def _live_step(self):
        """The step being issued into, with every process's requests so far (for the progress line)."""
        step = self.recorder.current
        if step is None or self._master is None:
            return step
        return self._master.merged_steps([step])[0]

    # --- in this process ------------------------------------------------------------------------------------

    def _execute_here(self) -> None:
        workload = Workload.over(self._prepared, self.settings.target)
        drain_s = self.settings.steps.drain_s
        self._environment = load_environment(
            [user_class_for(self.settings, workload, self.recorder)], self._shape, stop_timeout=drain_s
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
        settings, drain_s = self.settings, self.settings.steps.drain_s
        self._shape.hold_at_end = True  # the run stops the test once the workers' final reports are in
        self._environment = load_environment([user_class_for(settings, None)], self._shape, stop_timeout=drain_s)
        host, port = master_address(settings)
        runner = self._environment.create_master_runner(host, port)
        self._master = MasterSteps(runner, settings.to_dict(), self.recorder.started_ns)
        announce_steps(runner, self._shape.events)
        self._shape.results = self._master.collect
        local = settings.processes if settings.processes > 1 else 0
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "*", "") else host
        workers = LocalWorkers(local, runner.server.port, self.log_level, connect_host)
        if settings.remote_workers:
            logger.info("waiting for %d workers from other hosts: ipsbench-load worker --master %s:%d",
                        settings.remote_workers, host, runner.server.port)
        try:
            ready_s = WORKERS_READY_S if not settings.remote_workers else REMOTE_WORKERS_READY_S
            problems = self._master.wait_ready(settings.worker_count, ready_s, cancel=self._interrupted)
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
        if self._scraper is None:
            return None
        scrapes = self._scraper.scrapes
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
        window_s = steps.window_s * steps.windows_per_step
        if self.settings.validity.latency_slo:  # a window may grow to hold its objectives' samples
            window_s = max(window_s, steps.longest_window_s)
        per_step = steps.warmup_s + window_s + steps.drain_s + DRAIN_GRACE_S + TICK_SLACK_S
        return per_step * steps.step_count + RUN_LIMIT_MARGIN_S

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


def master_address(settings: RunSettings) -> tuple[str, int]:
    """Where the master listens: ``--master-bind``, else loopback (port 5557 for workers from other hosts, any
    free port for workers on this box)."""
    if settings.master_bind:
        host, _, port = settings.master_bind.rpartition(":")
        return host, int(port)
    if not settings.remote_workers:
        return "127.0.0.1", 0
    return ("0.0.0.0" if in_container() else "127.0.0.1"), DEFAULT_MASTER_PORT


def in_container() -> bool:
    """Inside a container (Docker, Podman, a Kubernetes pod), where workers reach the master from outside."""
    return (Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()
            or "KUBERNETES_SERVICE_HOST" in os.environ)


def read_engine_bench(path: str) -> dict | None:
    """The JSON ``ipsbench-serve bench --json`` wrote, as the report carries it; SetupError when unreadable."""
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SetupError(f"--engine-bench {path}: {error}") from error
    if not isinstance(data, dict):
        raise SetupError(f"--engine-bench {path}: expected a JSON object")
    return data
