"""Distributed runs through locust's master and workers.

The master's load shape announces each step to the workers (a custom message); every worker records its own
requests into steps of its own with the same index, and sends their encoded state (counts and HDR histograms)
in locust's worker reports (``report_to_master`` on the worker, ``worker_report`` on the master). A report
carries a snapshot of each step that changed since the previous one, so the latest snapshot per worker and
step is the worker's state; the master merges them per step. At the end the master asks every worker for a
final report. A worker that locust marks missing, or that sends no final report, is *lost*: its last
snapshot is kept, its requests in flight at that snapshot are counted abandoned, and the run is INVALID.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

import gevent
import gevent.event
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

from ipsbench.loadgen.outcomes import Outcome
from ipsbench.loadgen.recorder import RunRecorder, StepRecord
from ipsbench.loadgen.step_encoding import decode_step, encode_step, merge_step

logger = logging.getLogger(__name__)

JOIN_MESSAGE = "ipsbench_join"
"""Worker → master, once its listeners are registered: send me the run's setup."""
SETUP_MESSAGE = "ipsbench_setup"
"""Master → worker: the run's settings, and the worker's index as the master (and so the report) numbers it."""
WORKER_INDEX_KEY = "worker_index"
READY_MESSAGE = "ipsbench_ready"
"""Worker → master: requests prepared (or the error that prevented it)."""
STEP_MESSAGE = "ipsbench_step"
"""Master → workers: a step begins, or the current one is interrupted."""
FINISH_MESSAGE = "ipsbench_finish"
"""Master → worker: stop any user left and send the final report."""
REPORT_NOW_MESSAGE = "ipsbench_report_now"
"""Master → workers: send a report now (the master needs merged results: a stability judgement, a search)."""
COLLECT_TIMEOUT_S = 5.0
"""How long the master waits for the reports it asked for; a worker that sends none is judged without."""
REPORT_KEY = "ipsbench"
WATCH_INTERVAL_S = 0.5
"""How often the master looks for workers that locust marked missing."""


def announce_step(runner: MasterRunner, step: StepRecord) -> None:
    """Tell every worker that ``step`` begins now."""
    runner.send_message(STEP_MESSAGE, {"open": {
        "index": step.index, "concurrency": step.concurrency, "warmup_s": step.warmup_s,
        "window_s": step.window_s, "rate_per_s": step.rate_per_s, "trials_max": step.trials_max,
        "phase": step.phase, "window_requests": step.window_requests,
    }})


def announce_end_after_trials(runner: MasterRunner, step: StepRecord) -> None:
    """Tell every worker that ``step`` ends after its ``trials_used`` measured windows."""
    runner.send_message(STEP_MESSAGE, {"end_after_trials": {
        "index": step.index, "trials": step.trials_used, "stable": step.stable,
    }})


def announce_window_resized(runner: MasterRunner, step: StepRecord) -> None:
    """Tell every worker ``step``'s measured window's new length."""
    runner.send_message(STEP_MESSAGE, {"resize_window": {"index": step.index, "window_s": step.measured_window_s}})


def announce_interrupt(runner: MasterRunner) -> None:
    """Tell every worker to stop issuing: the current step's window ends now."""
    runner.send_message(STEP_MESSAGE, {"interrupt": True})


def announce_steps(runner: MasterRunner, step_events) -> None:
    """Tell the workers every step a shape opens, grows, ends after its trials or interrupts (``step_events``: the
    shape's :class:`~ipsbench.loadgen.shape.StepEvents`)."""
    step_events.opened.add_listener(lambda step, **_: announce_step(runner, step))
    step_events.trials_ended.add_listener(lambda step, **_: announce_end_after_trials(runner, step))
    step_events.window_resized.add_listener(lambda step, **_: announce_window_resized(runner, step))
    step_events.interrupted.add_listener(lambda **_: announce_interrupt(runner))


def send_report(runner: WorkerRunner) -> None:
    """Send a worker report now, through the same event and message as locust's periodic ones."""
    data: dict = {}
    runner.environment.events.report_to_master.fire(client_id=runner.client_id, data=data)
    runner.send_message("stats", data)


def _signature(step: StepRecord) -> tuple:
    return (step.issued, *step.counts.values(), step.scheduled, step.window_sends, step.not_sent, step.interrupted)


class WorkerSteps:
    """Worker side: steps opened on the master's word, in ``recorder`` (the users' step source)."""

    def __init__(self, runner: WorkerRunner, recorder: RunRecorder | None = None) -> None:
        self.runner = runner
        self.recorder = recorder or RunRecorder()
        self.final = False
        self._sent: dict[int, tuple] = {}
        self._answered = 0
        runner.register_message(STEP_MESSAGE, self._on_step)
        runner.register_message(REPORT_NOW_MESSAGE, self._on_report_now)
        runner.environment.events.report_to_master.add_listener(self._on_report_to_master)

    def send_final_report(self) -> None:
        """Every step, marked final (call once no user is left)."""
        self.final = True
        send_report(self.runner)

    def _on_step(self, environment, msg, **_) -> None:
        if msg.data.get("interrupt"):
            self.recorder.interrupt()
            return
        if resized := msg.data.get("resize_window"):
            for step in self.recorder.steps:
                if step.index == resized["index"]:
                    step.resize_window(resized["window_s"], self.recorder.now_ns())
            return
        if ended := msg.data.get("end_after_trials"):
            for step in self.recorder.steps:
                if step.index == ended["index"]:
                    step.end_after_trials(ended["trials"], ended["stable"], self.recorder.now_ns())
            return
        step = msg.data["open"]
        self.recorder.open_step(
            step["concurrency"], step["warmup_s"], step["window_s"], step["rate_per_s"], index=step["index"],
            trials_max=step.get("trials_max", 1), phase=step.get("phase"),
            window_requests=step.get("window_requests", 0),
        )

    def _on_report_now(self, environment, msg, **_) -> None:
        self._answered = msg.data
        send_report(self.runner)

    def _on_report_to_master(self, client_id: str, data: dict, **_) -> None:
        changed = [step for step in self.recorder.steps if self.final or self._sent.get(step.index) != _signature(step)]
        data[REPORT_KEY] = {"pid": os.getpid(), "final": self.final, "answered": self._answered,
                            "steps": [encode_step(step) for step in changed]}
        self._sent.update((step.index, _signature(step)) for step in changed)


@dataclass
class WorkerState:
    """What the master knows about one worker."""

    id: str
    index: int
    pid: int | None = None
    ready: bool = False
    error: str | None = None
    steps: dict[int, dict] = field(default_factory=dict)
    """Latest encoded snapshot per step index."""
    last_report_ns: int | None = None
    final: bool = False
    answered: int = 0
    """The latest report request it answered."""
    lost_at_ns: int | None = None
    lost_because: str = ""
    in_flight_when_lost: int = 0
    """Requests in flight at its last report, counted abandoned when it was lost."""


class MasterSteps:
    """Master side: hands each worker the run's setup, keeps its latest step snapshots, merges them."""

    def __init__(self, runner: MasterRunner, setup: dict, started_ns: int, rejoins: bool = False) -> None:
        self.runner = runner
        self.setup = setup
        self.started_ns = started_ns
        self.rejoins = rejoins
        """Workers leave locust's client list when a test stops and rejoin for the next (the web UI's tests), so
        absence alone does not lose one; a missing heartbeat, or no final report at the end, still does."""
        self.workers: dict[str, WorkerState] = {}
        self._requests = 0
        runner.environment.events.worker_report.add_listener(self._on_worker_report)
        runner.register_message(JOIN_MESSAGE, self._on_join)
        runner.register_message(READY_MESSAGE, self._on_ready)
        self._watcher = gevent.spawn(self._watch_missing)

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def wait_ready(self, count: int, timeout_s: float, cancel: gevent.event.Event) -> list[str]:
        """Wait until ``count`` workers are ready (or ``cancel`` is set); the problems that kept some from it
        (empty: all ready, or cancelled)."""
        deadline = time.monotonic() + timeout_s
        while sum(w.ready for w in self.workers.values()) < count and time.monotonic() < deadline:
            if any(w.error for w in self.workers.values()) or cancel.wait(timeout=0.05):
                break
        if cancel.is_set():
            return []
        problems = [f"worker {w.index}: {w.error}" for w in self.workers.values() if w.error]
        ready = sum(w.ready for w in self.workers.values())
        if ready < count and not problems:
            problems.append(f"{ready} of {count} workers ready after {timeout_s:g} s")
        return problems

    def finish(self, timeout_s: float) -> None:
        """Ask every worker still there for its final report (stopping any user it still runs) and wait for
        them, bounded; a worker that sends none in time is lost."""
        for worker in self._pending():
            self.runner.send_message(FINISH_MESSAGE, None, client_id=worker.id)
        deadline = time.monotonic() + timeout_s
        while self._pending() and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for worker in self._pending():
            self._lose(worker, f"no final report within {timeout_s:g} s")

    def close(self) -> None:
        """Stop watching for missing workers."""
        self._watcher.kill(block=False)

    def collect(self, step: StepRecord, timeout_s: float = COLLECT_TIMEOUT_S) -> StepRecord:
        """``step`` merged from every worker's report, asked for now (bounded wait)."""
        self._requests += 1
        request = self._requests
        for worker in self._pending():
            self.runner.send_message(REPORT_NOW_MESSAGE, request, client_id=worker.id)
        deadline = time.monotonic() + timeout_s
        while any(w.answered < request for w in self._pending()) and time.monotonic() < deadline:
            gevent.sleep(0.01)
        (merged,) = self.merged_steps([step])
        return merged

    # --- results ----------------------------------------------------------------------------------------------

    def merged_steps(self, planned: list[StepRecord]) -> list[StepRecord]:
        """Per step the master opened: the workers' snapshots merged (the master's empty step where none)."""
        merged = []
        for step in planned:
            snapshots = [w.steps[step.index] for w in self.workers.values() if step.index in w.steps]
            if not snapshots:
                merged.append(step)
                continue
            into = decode_step(snapshots[0], start_ns=step.start_ns)
            for snapshot in snapshots[1:]:
                merge_step(into, snapshot)
            # The master judged the step's trials; workers lost before they heard it may not say so.
            into.trials_used, into.stable, into.phase = step.trials_used, step.stable, step.phase
            if step.trials_used:
                into.window_end_ns = step.window_end_ns
            merged.append(into)
        return merged

    def describe(self) -> list[dict]:
        """The workers as the report lists them, with their per-step counts (which sum to the merged ones)."""
        described = []
        for worker in sorted(self.workers.values(), key=lambda w: w.index):
            entry = {
                "id": worker.id, "index": worker.index, "pid": worker.pid, "final_report": worker.final,
                "steps": [
                    {"index": index, "issued": data["issued"], **data["counts"]}
                    for index, data in sorted(worker.steps.items())
                ],
                "lost": None,
            }
            if worker.lost_at_ns is not None:
                entry["lost"] = self._lost_entry(worker)
            described.append(entry)
        return described

    def _lost_entry(self, worker: WorkerState) -> dict:
        """When it was lost, and an upper bound on what it may have issued that no report covers: its request
        rate (from its own reports, or its peers' where it reported none) over the time since its last report."""
        last_ns = worker.last_report_ns or self.started_ns
        last_report_after_s = None if worker.last_report_ns is None else round((last_ns - self.started_ns) / 1e9, 3)
        unreported_s = max((worker.lost_at_ns - last_ns) / 1e9, 0.0)
        own = self._issued_per_s(worker)
        peers = [rate for other in self.workers.values() if other is not worker and (rate := self._issued_per_s(other))]
        issued_per_s = own or (sum(peers) / len(peers) if peers else 0.0)
        return {
            "because": worker.lost_because,
            "lost_after_s": round((worker.lost_at_ns - self.started_ns) / 1e9, 3),
            "last_report_after_s": last_report_after_s,
            "unreported_s": round(unreported_s, 3),
            "issued_per_s": round(issued_per_s, 3),
            "issued_per_s_from": "its own reports" if own else "the other workers' reports",
            "may_have_lost_requests": math.ceil(issued_per_s * unreported_s),
            "in_flight_at_last_report": worker.in_flight_when_lost,
        }

    def _issued_per_s(self, worker: WorkerState) -> float:
        issued = sum(data["issued"] for data in worker.steps.values())
        if not issued or worker.last_report_ns is None or worker.last_report_ns <= self.started_ns:
            return 0.0
        return issued / ((worker.last_report_ns - self.started_ns) / 1e9)

    # --- listeners --------------------------------------------------------------------------------------------

    def _on_join(self, environment, msg, **_) -> None:
        if msg.node_id not in self.workers:
            worker = self.workers[msg.node_id] = WorkerState(msg.node_id, self.runner.get_worker_index(msg.node_id))
            setup = {**self.setup, WORKER_INDEX_KEY: worker.index}
            self.runner.send_message(SETUP_MESSAGE, setup, client_id=msg.node_id)

    def _on_ready(self, environment, msg, **_) -> None:
        worker = self.workers.get(msg.node_id)
        if worker is not None:
            worker.pid, worker.error = msg.data["pid"], msg.data["error"]
            worker.ready = worker.error is None
            logger.info("worker %d (pid %s) %s", worker.index, worker.pid, worker.error or "ready")

    def _on_worker_report(self, client_id: str, data: dict, **_) -> None:
        worker, report = self.workers.get(client_id), data.get(REPORT_KEY)
        if worker is None or report is None or worker.lost_at_ns is not None:
            return
        worker.pid = report["pid"]
        worker.last_report_ns = time.perf_counter_ns()
        for step in report["steps"]:
            worker.steps[step["index"]] = step
        worker.answered = max(worker.answered, report.get("answered", 0))
        if report["final"]:
            worker.final = True

    def _watch_missing(self) -> None:
        while True:
            gevent.sleep(WATCH_INTERVAL_S)
            for worker in self._pending():
                node = self.runner.clients.get(worker.id)
                if node is None:
                    if not self.rejoins:
                        self._lose(worker, "left the run without a final report")
                elif node.state == STATE_MISSING:
                    self._lose(worker, "locust marked it missing (no heartbeat)")

    # --- helpers ----------------------------------------------------------------------------------------------

    def _pending(self) -> list[WorkerState]:
        return [w for w in self.workers.values() if w.ready and not w.final and w.lost_at_ns is None]

    def _lose(self, worker: WorkerState, because: str) -> None:
        worker.lost_at_ns, worker.lost_because = time.perf_counter_ns(), because
        for data in worker.steps.values():  # what was in flight at its last report will never be accounted
            in_flight = self._in_flight(data)
            data["counts"][Outcome.ABANDONED.value] += in_flight
            worker.in_flight_when_lost += in_flight
        logger.error("worker %d (pid %s) lost: %s", worker.index, worker.pid, because)

    @staticmethod
    def _in_flight(data: dict) -> int:
        return data["issued"] - sum(data["counts"].values())
