"""A locust worker process of a distributed run, and the worker processes a master starts on its own box.

``ipsbench-load worker --master HOST:PORT`` connects to the master, asks it for the run's settings, prepares the
requests, runs the users the master dispatches to it (recording into its own steps, and into its own per-request
log when the run has one), sends its final report when asked, and exits when the master says quit (or, bounded,
after its final report).
"""

from __future__ import annotations

# locust patches the process for gevent on import; it must come first.
from ipsbench.loadgen.environment import configure_user_class, load_environment, loop_of, user_classes  # isort: skip

import logging
import os
import subprocess
import sys
import time

import gevent
import gevent.event

from ipsbench.loadgen.distributed import (
    FINISH_MESSAGE,
    JOIN_MESSAGE,
    READY_MESSAGE,
    SETUP_MESSAGE,
    WORKER_INDEX_KEY,
    WorkerSteps,
)
from ipsbench.loadgen.request_log import RequestLogError, open_request_log, worker_path
from ipsbench.loadgen.scenarios.catalog import SCENARIOS  # noqa: F401 - registers the scenarios' settings classes
from ipsbench.loadgen.senders import off_the_hub, prompt_senders
from ipsbench.loadgen.settings import RunSettings
from ipsbench.loadgen.users import Workload
from ipsbench.loadgen.workload import SetupError, prepare_workload

logger = logging.getLogger(__name__)

QUIT_WAIT_S = 10.0
"""After its final report, how long a worker waits for the master's quit before it exits anyway."""
STOP_USERS_S = 5.0
"""Bound on stopping users the master's finish found still running (they count abandoned)."""
REAP_S = 10.0
"""How long a master waits for its local workers to exit before it terminates them."""
PARENT_CHECK_S = 1.0
"""How often a worker started with ``exit_with_parent`` checks that the process that started it is still there."""


class Worker:
    """A worker's lifecycle: ``run()``: join the master, set up on its word, serve, final report, exit."""

    def __init__(self, master_host: str, master_port: int, exit_with_parent: bool = False) -> None:
        self.exit_with_parent = exit_with_parent
        self._parent_pid = os.getppid()
        self.classes = user_classes()
        self.environment = load_environment(list(self.classes.values()))
        self.runner = self.environment.create_worker_runner(master_host, master_port)  # connects
        self.steps = WorkerSteps(self.runner)
        self.finished = gevent.event.Event()
        self.prepared = None
        self.runner.register_message(SETUP_MESSAGE, self._on_setup, concurrent=True)
        self.runner.register_message(FINISH_MESSAGE, self._on_finish, concurrent=True)

    def run(self) -> int:
        with prompt_senders():
            self.runner.send_message(JOIN_MESSAGE)
            if self.exit_with_parent:
                gevent.spawn(self._watch_parent)
            stopped = gevent.spawn(self.runner.greenlet.join)
            gevent.wait([stopped, self.finished], count=1)
            stopped.join(timeout=QUIT_WAIT_S)
            if not stopped.ready():
                logger.warning("no quit from the master %g s after the final report; exiting", QUIT_WAIT_S)
                self.runner.quit()
            if self.prepared is not None:
                off_the_hub(self.prepared.release)  # its shared-memory regions, if it has any
        self.steps.recorder.close_request_log()
        return 0

    def _watch_parent(self) -> None:
        while os.getppid() == self._parent_pid:
            gevent.sleep(PARENT_CHECK_S)
        logger.error("the process that started this worker (pid %d) is gone; quitting", self._parent_pid)
        self.runner.quit()

    def _on_setup(self, environment, msg, **_) -> None:
        try:
            settings = RunSettings.from_dict(msg.data)
            prepared = self.prepared = off_the_hub(prepare_workload, settings.target, settings.workload)
            if settings.request_log:
                index = msg.data.get(WORKER_INDEX_KEY, self.runner.worker_index)  # as the report numbers workers
                path = worker_path(settings.request_log, index)
                self.steps.recorder.request_log = open_request_log(path, settings.workload.images_per_request)
        except (SetupError, RequestLogError, ValueError, KeyError) as error:
            logger.error("setup failed: %s", error)
            self.runner.send_message(READY_MESSAGE, {"pid": os.getpid(), "error": str(error)})
            return
        workload = Workload.over(prepared, settings.target)
        configure_user_class(self.classes[loop_of(settings)], settings, workload, self.steps.recorder)
        self.runner.send_message(READY_MESSAGE, {"pid": os.getpid(), "error": None})

    def _on_finish(self, environment, msg, **_) -> None:
        if self.runner.user_greenlets:
            logger.warning("finishing with %d users still running; their requests in flight are abandoned",
                           len(self.runner.user_greenlets))
            self.runner.user_greenlets.kill(block=True, timeout=STOP_USERS_S)
        self.steps.recorder.close_request_log()  # its abandoned requests have their rows by now
        self.steps.send_final_report()
        self.finished.set()


def run_worker(master_host: str, master_port: int, exit_with_parent: bool = False) -> int:
    return Worker(master_host, master_port, exit_with_parent).run()


class LocalWorkers:
    """Worker processes on this box, each in a session of its own (Ctrl-C reaches only the master)."""

    def __init__(self, count: int, master_port: int, log_level: str, master_host: str = "127.0.0.1") -> None:
        command = [sys.executable, "-m", "ipsbench.loadgen", "worker", "--master", f"{master_host}:{master_port}",
                   "--exit-with-parent", "--log-level", log_level]
        self.processes = [subprocess.Popen(command, start_new_session=True) for _ in range(count)]
        if count:
            logger.info("started %d worker processes: %s", count, ", ".join(str(p.pid) for p in self.processes))

    def stop(self, timeout_s: float = REAP_S) -> None:
        """Wait (bounded) for every worker to exit; terminate, then kill, those that do not."""
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                logger.warning("worker process %d did not exit; terminating it", process.pid)
                process.terminate()
                try:
                    process.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
