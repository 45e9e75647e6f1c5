"""``ipsbench-load ui``: an interactive run in locust's web UI, with a tab showing ipsbench's own figures, and the
run's report.

Each test the UI starts is one step, measured from its start (no warm-up) until it is stopped in the UI; a new user
count or rate given while a test runs ends that step and opens the next. The run is a closed loop over the form's
users, or with ``--rate`` an open loop: each test sends at that arrival rate (latency from the intended send times),
split evenly among the form's users, whose requests in flight together stay within ``--max-in-flight``; the form's
custom parameter ``rate`` changes the rate per test. The extra tab (route ``/ipsbench``) shows the exact HDR
percentiles and images/sec (``/ipsbench/stats`` gives them as JSON), next to locust's rounded ones.

With ``--out`` the report (the same files as every scenario's, from the same builder and writers) goes there after each
test stops and when the process ends: SIGINT or SIGTERM stop a running test (its in-flight requests waited for up to
``--drain``, a second signal stops waiting) before the last one is written. With ``--metrics-url`` the server's
metrics are scraped at each test's start and end. With ``--remote-workers`` the UI is a locust master: workers
(``ipsbench-load worker --master HOST:PORT``) take the run's settings from it, each test start and stop is announced
to them, and the tab and the report show their reports merged."""

from __future__ import annotations

# locust patches the process for gevent on import; it must come first.
from ipsbench.loadgen.environment import gevent_delivery, load_environment, user_class_for  # isort: skip

import datetime
import html
import logging
import signal
import sys
import time

import gevent
import gevent.event
from flask import jsonify, request
from locust import events
from locust.argument_parser import get_parser
from locust.env import Environment
from locust.runners import STATE_INIT, STATE_STOPPED, MasterRunner

from ipsbench.loadgen.client import TargetError
from ipsbench.loadgen.distributed import MasterSteps, announce_interrupt, announce_step
from ipsbench.loadgen.recorder import RunRecorder, StepRecord
from ipsbench.loadgen.report.build import RunFacts, build_report
from ipsbench.loadgen.report.destination import (
    DestinationError,
    check_out_dir,
    keep_unfinished_report,
    write_reports_somewhere,
)
from ipsbench.loadgen.report.files import write_reports
from ipsbench.loadgen.report.schema import step_load
from ipsbench.loadgen.report.steps import step_entry
from ipsbench.loadgen.run import FINAL_REPORTS_S, RunResult
from ipsbench.loadgen.scrape import SCRAPE_TIMEOUT_S, StepScrapes
from ipsbench.loadgen.senders import off_the_hub, prompt_senders
from ipsbench.loadgen.settings import MAX_CONCURRENCY, RunSettings, UiSettings, check_ui_rate
from ipsbench.loadgen.step_encoding import decode_step, encode_step
from ipsbench.loadgen.users import Workload
from ipsbench.loadgen.workload import PreparedWorkload, SetupError, prepare_workload
from ipsbench.server.signals import capture_signals

logger = logging.getLogger(__name__)

DEFAULT_MASTER_BIND = "127.0.0.1:5557"
RATE_PARAMETER = "rate"
"""The custom parameter of locust's form that sets an open-loop test's rate."""
SCRAPES_S = 2 * SCRAPE_TIMEOUT_S + 1.0
"""Bound on waiting for a stopped test's scrapes (the one at its start may still be running, then its end's)."""
NO_REPORT_EXIT_CODE = 0
"""No report (no ``--out``, or no test was started): nothing was judged; the session ended as asked."""


class UiSteps:
    """One step per test started in the UI, measured from its start (no warm-up) until it is stopped, and the
    server's metrics scraped at each step's start and end (``scrapes``: None, not scraped)."""

    def __init__(self, window_s: float, scrapes: StepScrapes | None = None) -> None:
        self.recorder = RunRecorder()
        self.master: MasterSteps | None = None
        self.window_s = window_s
        self.scrapes = scrapes
        self._scraping: dict[int, gevent.Greenlet] = {}

    @property
    def running(self) -> StepRecord | None:
        """The step of the test running now, if any."""
        return self.recorder.current

    def start(self, users: int, rate_per_s: float | None) -> None:
        step = self.recorder.open_step(users, 0.0, self.window_s, rate_per_s=rate_per_s)
        if self.master is not None:
            announce_step(self.master.runner, step)
        if self.scrapes is not None:
            self._scraping[step.index] = gevent.spawn(self.scrapes.window_start, step.index)
        logger.info("test %d started: %s", step.index + 1,
                    f"{rate_per_s:g} requests/s over {users} users" if rate_per_s else f"{users} users")

    def stop(self) -> StepRecord | None:
        """End the running test's step now (its window closes; in-flight requests still record into it)."""
        step = self.recorder.current
        if step is None:
            return None
        self.recorder.interrupt()
        if self.master is not None:
            announce_interrupt(self.master.runner)
        if self.scrapes is not None:
            self._scraping[step.index] = gevent.spawn(self._scrape_end, self._scraping[step.index], step)
        return step

    def _scrape_end(self, started: gevent.Greenlet, step: StepRecord) -> None:
        started.join()
        self.scrapes.window_end(step.index, step.window_start_ns, step.window_end_ns)

    def wait_for_scrapes(self) -> None:
        """Wait (bounded) for the scrapes of stopped steps."""
        current = self.recorder.current
        stopped = [g for index, g in self._scraping.items() if current is None or index != current.index]
        gevent.joinall(stopped, timeout=SCRAPES_S)

    def server_side(self) -> dict | None:
        """The scraped server metrics as the report takes them, or None when none were asked for."""
        if self.scrapes is None:
            return None
        return {"metrics_url": self.scrapes.url, "steps": self.scrapes.blocks, "warnings": self.scrapes.warnings}

    def all_steps(self) -> list[StepRecord]:
        """Every step, with the workers' requests merged in for a master."""
        steps = self.recorder.steps
        return self.master.merged_steps(steps) if self.master is not None else steps

    def stopped_steps(self) -> list[StepRecord]:
        """The steps of the tests stopped so far (a report's: a running test's window has no end yet)."""
        current = self.recorder.current
        return [step for step in self.all_steps() if current is None or step.index != current.index]

    def figures(self) -> list[dict]:
        now_ns = self.recorder.now_ns()
        entries = []
        for step in self.all_steps():
            if not step.interrupted:
                step = _as_of(step, now_ns)
            entries.append(step_entry(step, max_error_rate=1.0))
        return entries


def _as_of(step: StepRecord, now_ns: int) -> StepRecord:
    """A running step's figures so far: the same record with its window ending now."""
    view = decode_step(encode_step(step), start_ns=step.start_ns)
    view.window_end_ns = max(min(now_ns, view.window_end_ns), view.window_start_ns)
    return view


class UiReport:
    """The run's report from the UI's steps, by the report's own builder; written into ``--out`` after each test
    (without a fallback: the last one has it) and when the process ends."""

    def __init__(self, settings: RunSettings, prepared: PreparedWorkload, steps: UiSteps) -> None:
        self.settings, self.prepared, self.steps = settings, prepared, steps
        self.interrupted_by: str | None = None
        self._started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._started_ns = time.perf_counter_ns()
        self._writing: gevent.Greenlet | None = None

    def build(self) -> dict:
        master = self.steps.master
        return build_report(self.steps.stopped_steps(), RunFacts(
            settings=self.settings.to_report(),
            target=self.prepared.target,
            model=self.prepared.model,
            payload=self.prepared.payload_description(self.settings.workload),
            scenario=self.settings.scenario,
            started_at=self._started_at,
            duration_s=(time.perf_counter_ns() - self._started_ns) / 1e9,
            interrupted_by=self.interrupted_by,
            max_error_rate=self.settings.validity.max_error_rate,
            workers=master.describe() if master is not None else [],
            unix_s=self.steps.recorder.unix_s,
            server=self.steps.server_side(),
            simulated=self.prepared.simulated,
        ))

    def after_test(self, step: StepRecord) -> None:
        """Write the report once the test that ``step`` measured has stopped (in a greenlet of its own, so the
        UI's stop answers at once; after the write before it)."""
        self._writing = gevent.spawn(self._write_after_test, step, self._writing)

    def _write_after_test(self, step: StepRecord, previous: gevent.Greenlet | None) -> None:
        if previous is not None:
            previous.join()
        self.steps.wait_for_scrapes()
        if self.steps.master is not None:
            self.steps.master.collect(step)  # the workers' last requests of the test
        try:
            json_path, _ = write_reports(self.build(), self.settings.out_dir)
        except OSError as error:  # the session goes on; the final report has a fallback folder
            logger.warning("could not write the report into %s: %s", self.settings.out_dir, error)
            return
        logger.info("test %d stopped; report written to %s", step.index + 1, json_path)

    def final(self) -> RunResult:
        """Write the last report (into a fallback folder if ``--out`` cannot take it)."""
        if self._writing is not None:
            self._writing.join(timeout=SCRAPES_S + FINAL_REPORTS_S)
        self.steps.wait_for_scrapes()
        report = self.build()
        written = write_reports_somewhere(report, self.settings.out_dir)
        if written.json_path is not None:
            logger.info("report written to %s", written.json_path)
        return RunResult(report, written.json_path, written.markdown_path, self.interrupted_by, written.failure)


def _page(entries: list[dict]) -> str:
    rows = []
    for entry in entries:
        latency = entry["latency_us"] or {}
        cells = [entry["index"] + 1, step_load(entry), f"{entry['window_s']:.1f}", entry["window_requests"]["ok"],
                 entry["images_per_s"], *[latency.get(name) for name in ("p50", "p90", "p95", "p99", "p99.9", "max")],
                 entry["errors_total"]]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c if c is not None else '–'))}</td>" for c in cells)
                    + "</tr>")
    header = ["test", "load", "seconds", "requests", "images/sec", "p50 us", "p90 us", "p95 us", "p99 us",
              "p99.9 us", "max us", "errors"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>ipsbench</title>"
        "<meta http-equiv='refresh' content='2'></head><body>"
        "<h1>ipsbench: exact latency (HDR, microseconds) and images/sec</h1><table border='1'><tr>"
        + "".join(f"<th>{h}</th>" for h in header) + "</tr>" + "".join(rows) + "</table></body></html>"
    )


def form_problem(form, settings: RunSettings) -> str | None:
    """Why a test cannot start with the values of locust's form (None: it can), checked before locust starts any
    user: the user count within the bounds, an open-loop rate a number within them."""
    try:
        users = int(form.get("user_count", ""))
    except ValueError:
        return f"users must be a whole number, got {form.get('user_count')!r}"
    most = MAX_CONCURRENCY if not settings.open_loop else min(MAX_CONCURRENCY, settings.steps.max_in_flight)
    if not 1 <= users <= most:
        return f"users must be in [1, {most}], got {users}"
    if settings.open_loop and RATE_PARAMETER in form:
        try:
            rate_per_s = float(form[RATE_PARAMETER])
        except ValueError:
            return f"rate must be a number of requests/s, got {form[RATE_PARAMETER]!r}"
        try:
            check_ui_rate(rate_per_s)
        except ValueError as error:
            return str(error)
    return None


def _rate_of_test(environment: Environment, settings: RunSettings) -> float | None:
    """The rate the next test sends at: the form's custom parameter, else ``--rate``; None for a closed loop."""
    if not settings.open_loop:
        return None
    return float(getattr(environment.parsed_options, RATE_PARAMETER, settings.steps.rate_per_s))


def _offer_rate_parameter(settings: RunSettings) -> None:
    """Show the rate in locust's form as a custom parameter (the form's values are kept in the environment's
    ``parsed_options``, which locust's own parser builds)."""

    def add_rate(parser, **_) -> None:
        parser.add_argument(f"--{RATE_PARAMETER}", type=float, default=settings.steps.rate_per_s,
                            include_in_web_ui=True, help="open-loop arrival rate of the test, requests/s")

    events.init_command_line_parser.add_listener(add_rate)


def _tests_from_swarms(environment: Environment, steps: UiSteps, settings: RunSettings) -> None:
    """Every start of locust's runner (the form's start, or new values while a test runs) opens a step before any
    user is spawned: a new user count or rate while a test runs ends its step and opens the next."""
    runner = environment.runner
    locust_start = runner.start

    def start(user_count: int, spawn_rate: float, *args, **kwargs):
        rate_per_s = _rate_of_test(environment, settings)
        running = steps.running
        if running is None or running.concurrency != user_count or running.rate_per_s != rate_per_s:
            steps.stop()
            if workers_problem(runner) is None:  # else locust starts nothing either
                steps.start(user_count, rate_per_s)
        return locust_start(user_count, spawn_rate, *args, **kwargs)

    runner.start = start


def workers_problem(runner) -> str | None:
    """Why a master cannot start a test now (None: it can, or it is no master): no worker connected, as locust's
    own start finds it. A worker leaves when a test stops and rejoins once its users have stopped (``--drain``)."""
    if not isinstance(runner, MasterRunner) or runner.clients.ready + runner.clients.running + runner.clients.spawning:
        return None
    return "no worker is connected yet (after a test stops, workers rejoin once their users have stopped)"


def run_ui(ui: UiSettings, settings: RunSettings, reports: bool = True) -> int:
    """Serve the web UI until SIGINT or SIGTERM; ``reports``: write the report into ``settings.out_dir`` (the
    command line's ``--out``), else none. The exit code: as every scenario's with a report (130 or 143 when the
    signal stopped a running test, else the verdict's), 0 without one; 2 when the run cannot start."""
    # locust's web UI parses sys.argv as locust's own command line when it renders its page; ours is not one.
    sys.argv = sys.argv[:1]
    session = UiSession(ui, settings, reports)
    with capture_signals(session.on_signal, gevent_delivery), prompt_senders():
        if not session.prepare():
            return 2
        if session.exiting.is_set():  # a signal while the requests were prepared
            return NO_REPORT_EXIT_CODE
        session.serve()
        result = session.close()
    if result is None:
        logger.info("no report written: %s", "no test was started" if reports else "no --out")
        return NO_REPORT_EXIT_CODE
    return result.exit_code


class UiSession:
    """One ``ipsbench-load ui`` process: its requests prepared, locust's runner and web UI, the steps, the report."""

    def __init__(self, ui: UiSettings, settings: RunSettings, reports: bool) -> None:
        self.ui, self.settings, self.reports = ui, settings, reports
        self.exiting = gevent.event.Event()
        target = settings.target
        scrapes = StepScrapes(target.metrics_url, target.model, target.model_version) if target.metrics_url else None
        self.steps = UiSteps(settings.steps.window_s, scrapes)
        self.report: UiReport | None = None
        self.runner = None
        self.web_ui = None
        self._workload: Workload | None = None

    def prepare(self) -> bool:
        """Check ``--out``, describe the model and serialize the requests; False (said why) when the run cannot
        start."""
        settings, target = self.settings, self.settings.target
        try:
            if self.reports:
                check_out_dir(settings.out_dir)  # before anything is asked or sent, as every scenario
            prepared = off_the_hub(prepare_workload, target, settings.workload, not settings.distributed)
            self._workload = Workload.over(prepared, target) if not settings.distributed else None
        except (DestinationError, SetupError, TargetError) as error:
            logger.error("%s", error)
            return False
        if self.reports:
            keep_unfinished_report(settings.out_dir)
        self.report = UiReport(settings, prepared, self.steps)
        return True

    def serve(self) -> None:
        """Start locust's runner and web UI, and serve them until a signal."""
        settings, steps = self.settings, self.steps
        if settings.open_loop:
            _offer_rate_parameter(settings)
        environment = load_environment([user_class_for(settings, self._workload, steps.recorder)],
                                       host=settings.target.target, stop_timeout=settings.steps.drain_s,
                                       shared_events=True)
        # locust's own parser holds the form's values (the rate among them) between tests.
        environment.parsed_options = get_parser(default_config_files=[]).parse_args([])
        if settings.remote_workers:
            host, _, port = (settings.master_bind or DEFAULT_MASTER_BIND).rpartition(":")
            self.runner = environment.create_master_runner(host, int(port))
            steps.master = MasterSteps(self.runner, settings.to_dict(), steps.recorder.started_ns, rejoins=True)
            logger.info("workers join with: ipsbench-load worker --master %s:%d", host, self.runner.server.port)
        else:
            self.runner = environment.create_local_runner()
        _tests_from_swarms(environment, steps, settings)
        # test_stopping comes before locust stops the users: the step's window ends first, so they stop issuing.
        environment.events.test_stopping.add_listener(lambda **_: steps.stop())
        environment.events.test_stop.add_listener(self._on_test_stop)
        self.web_ui = _web_ui(environment, self.ui, steps, settings)
        where = f"report into {settings.out_dir}" if self.reports else "no report (no --out)"
        logger.info("web UI on http://%s:%d (ipsbench's figures at /ipsbench); %s", self.ui.web_host,
                    self.ui.web_port, where)
        self.exiting.wait()

    def close(self) -> RunResult | None:
        """Stop the running test (its users drain, bounded by ``--drain``), write the last report (None: none was
        asked for or no test was started), and stop locust."""
        logger.info("stopping the web UI")
        runner, master = self.runner, self.steps.master
        if runner.state not in (STATE_INIT, STATE_STOPPED):
            runner.stop()
        if master is not None:
            master.finish(FINAL_REPORTS_S)
        result = self.report.final() if self.reports and self.steps.recorder.steps else None
        if master is not None:
            master.close()
        runner.quit()
        self.web_ui.stop()
        return result

    def _on_test_stop(self, **_) -> None:
        if self.reports and not self.exiting.is_set() and self.steps.recorder.steps:
            self.report.after_test(self.steps.recorder.steps[-1])

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.exiting.is_set():
            logger.warning("%s again: not waiting for in-flight requests", name)
            if self.runner is not None and self.steps.master is None:
                self.runner.user_greenlets.kill(block=False)
            return
        if self.steps.running is not None:
            self.report.interrupted_by = name
            logger.warning("%s: stopping the test; waiting up to %g s for in-flight requests", name,
                           self.settings.steps.drain_s)
        self.exiting.set()


def _web_ui(environment: Environment, ui: UiSettings, steps: UiSteps, settings: RunSettings):
    """locust's web UI with ipsbench's tab, refusing a test whose form values are out of bounds."""
    web_ui = environment.create_web_ui(ui.web_host, ui.web_port)

    @web_ui.app.before_request
    def refuse_unfit_tests():
        if request.method == "POST" and request.path.rstrip("/").endswith("/swarm"):
            if problem := form_problem(request.form, settings) or workers_problem(environment.runner):
                logger.warning("test not started: %s", problem)
                return jsonify({"success": False, "message": problem, "host": environment.host})
        return None

    @web_ui.app.route("/ipsbench")
    def ipsbench_page() -> str:
        return _page(steps.figures())

    @web_ui.app.route("/ipsbench/stats")
    def ipsbench_stats() -> dict:
        return {"steps": steps.figures()}

    return web_ui
