"""``ipsbench-load ui``: an interactive run in locust's web UI, with a tab showing ipsbench's own figures.

The run is a closed loop whose users the UI starts and stops; ipsbench records every request into one open
step per test start, and the extra tab (route ``/ipsbench``) shows its exact HDR percentiles and images/sec
(``/ipsbench/stats`` gives them as JSON), next to locust's rounded ones. With ``--remote-workers`` the UI is a
locust master: workers (``ipsbench-load worker --master HOST:PORT``) take the run's settings from it, each test
start and stop is announced to them, and the tab shows their reports merged."""

from __future__ import annotations

# locust patches the process for gevent on import; it must come first.
from ipsbench.loadgen.environment import gevent_delivery, load_environment, user_classes  # isort: skip

import html
import logging
import sys
from pathlib import Path

import gevent.event

from ipsbench.loadgen.distributed import MasterSteps, announce_interrupt, announce_step
from ipsbench.loadgen.recorder import RunRecorder, StepRecord
from ipsbench.loadgen.report.steps import step_entry
from ipsbench.loadgen.scenarios.sweep import SweepSettings
from ipsbench.loadgen.senders import prompt_senders
from ipsbench.loadgen.step_encoding import decode_step, encode_step
from ipsbench.loadgen.settings import RunSettings, TargetSettings, UiSettings, ValiditySettings, WorkloadSettings
from ipsbench.loadgen.users import Workload
from ipsbench.loadgen.workload import SetupError, prepare_workload
from ipsbench.server.signals import capture_signals

logger = logging.getLogger(__name__)

OPEN_ENDED_S = 365 * 24 * 3600.0
"""A UI step has no planned end: it is measured until the test is stopped in the UI."""


DEFAULT_MASTER_BIND = "127.0.0.1:5557"


class UiSteps:
    """One step per test started in the UI, measured from its start (no warm-up) until it is stopped."""

    def __init__(self) -> None:
        self.recorder = RunRecorder()
        self.master: MasterSteps | None = None

    def start(self, users: int) -> None:
        step = self.recorder.open_step(users, 0.0, OPEN_ENDED_S)
        if self.master is not None:
            announce_step(self.master.runner, step)

    def stop(self) -> None:
        self.recorder.interrupt()
        if self.master is not None:
            announce_interrupt(self.master.runner)

    def figures(self) -> list[dict]:
        now_ns = self.recorder.now_ns()
        entries = []
        steps = self.recorder.steps
        if self.master is not None:
            steps = self.master.merged_steps(steps)
        for step in steps:
            if not step.interrupted:
                step = _as_of(step, now_ns)
            entries.append(step_entry(step, max_error_rate=1.0))
        return entries


def _as_of(step: StepRecord, now_ns: int) -> StepRecord:
    """A running step's figures so far: the same record with its window ending now."""
    view = decode_step(encode_step(step), start_ns=step.start_ns)
    view.window_end_ns = max(now_ns, view.window_start_ns)
    return view


def _page(entries: list[dict]) -> str:
    rows = []
    for entry in entries:
        latency = entry["latency_us"] or {}
        cells = [entry["index"] + 1, entry["concurrency"], f"{entry['window_s']:.1f}", entry["window_requests"]["ok"],
                 entry["images_per_s"], *[latency.get(name) for name in ("p50", "p90", "p95", "p99", "p99.9", "max")],
                 entry["errors_total"]]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c if c is not None else '–'))}</td>" for c in cells)
                    + "</tr>")
    header = ["test", "users", "seconds", "requests", "images/sec", "p50 us", "p90 us", "p95 us", "p99 us",
              "p99.9 us", "max us", "errors"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>ipsbench</title>"
        "<meta http-equiv='refresh' content='2'></head><body>"
        "<h1>ipsbench: exact latency (HDR, microseconds) and images/sec</h1><table border='1'><tr>"
        + "".join(f"<th>{h}</th>" for h in header) + "</tr>" + "".join(rows) + "</table></body></html>"
    )


def _worker_setup(target: TargetSettings, workload: WorkloadSettings) -> dict:
    """What each worker is told: the target and payload; its steps come from the UI's test starts."""
    settings = RunSettings(
        target=target,
        workload=workload,
        validity=ValiditySettings(),
        out_dir=Path("."),
        scenario="sweep",
        steps=SweepSettings(concurrency=(1,), max_trials=1),
    )
    return settings.to_dict()


def run_ui(ui: UiSettings, target: TargetSettings, workload: WorkloadSettings, remote_workers: int = 0,
           master_bind: str = "") -> int:
    # locust's web UI parses sys.argv as locust's own command line when it renders its page; ours is not one.
    sys.argv = sys.argv[:1]
    try:
        prepared = prepare_workload(target, workload)
    except SetupError as error:
        logger.error("%s", error)
        return 2
    steps = UiSteps()
    user_class = user_classes()["closed"]
    user_class.steps = steps.recorder
    environment = load_environment([user_class], host=target.target, shared_events=True)
    environment.events.test_start.add_listener(
        lambda **_: steps.start(environment.runner.target_user_count or 0))
    environment.events.test_stop.add_listener(lambda **_: steps.stop())
    if remote_workers:
        host, _, port = (master_bind or DEFAULT_MASTER_BIND).rpartition(":")
        runner = environment.create_master_runner(host, int(port))
        steps.master = MasterSteps(runner, _worker_setup(target, workload), steps.recorder.started_ns)
        logger.info("workers join with: ipsbench-load worker --master %s:%d", host, runner.server.port)
    else:
        user_class.workload = Workload.over(prepared, target)
        environment.create_local_runner()
    web_ui = environment.create_web_ui(ui.web_host, ui.web_port)

    @web_ui.app.route("/ipsbench")
    def ipsbench_page() -> str:
        return _page(steps.figures())

    @web_ui.app.route("/ipsbench/stats")
    def ipsbench_stats() -> dict:
        return {"steps": steps.figures()}

    logger.info("web UI on http://%s:%d (ipsbench's figures at /ipsbench)", ui.web_host, ui.web_port)
    stop = gevent.event.Event()
    with capture_signals(lambda _signum: stop.set(), gevent_delivery), prompt_senders():
        stop.wait()
    logger.info("stopping the web UI")
    environment.runner.quit()
    web_ui.stop()
    return 0
