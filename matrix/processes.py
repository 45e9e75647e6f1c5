"""The roles as child processes: each stage of a cell is a command of its own (``ipsbench-export``,
``ipsbench-serve bench``, ``ipsbench-serve``, ``ipsbench-load``), its output in a log file, stoppable on a signal.

Children run in their own session, so a Ctrl-C reaches the matrix first; the matrix then asks the running stage to
stop (SIGINT: the load generator writes its report), bounded, and stops the server last. Nothing outlives the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

READY_LINE = "ipsbench-serve: ready"
LISTENING_PREFIX = "ipsbench-serve: gRPC listening on "
METRICS_PREFIX = "ipsbench-serve: metrics on "
STOP_GRACE_S = 60.0
"""How long a stage asked to stop may take to write what it has (a load run's report) before it is killed."""
POLL_S = 0.1


class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C, SIGTERM) while a stage ran."""


class StopFlag:
    """Set by the signal handler; the stage running when it is set is asked to stop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def set(self, signal_name: str) -> None:
        self.signal_name = signal_name
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


ROLE_MODULES = {"ipsbench-export": "ipsbench.export", "ipsbench-serve": "ipsbench.server",
                "ipsbench-load": "ipsbench.loadgen"}


def command(script: str) -> list[str]:
    """A role's command run by this interpreter (``python -m ipsbench.export``): the same installation, whether or
    not its console scripts are on PATH (or installed at all, where the role folders are on PYTHONPATH)."""
    return [sys.executable, "-m", ROLE_MODULES[script]]


@dataclass
class StageResult:
    returncode: int
    seconds: float
    log: Path

    def tail(self, lines: int = 3, width: int = 400) -> str:
        """The log's last lines (its last error lines where it has some), bounded, for a failure's reason."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        kept = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
        errors = [line for line in kept if "error" in line.lower()]
        return " | ".join((errors or kept)[-lines:])[-width:]


def _stop(process: subprocess.Popen, first: int) -> None:
    """``first`` (SIGINT or SIGTERM) to the child's group, then SIGKILL after the grace period."""
    try:
        os.killpg(process.pid, first)
    except ProcessLookupError:
        return
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def run_stage(argv: list[str], log: Path, stop: StopFlag, timeout_s: float) -> StageResult:
    """Run ``argv`` to its end, its output into ``log``. A stop asks it to finish (SIGINT) and raises
    :class:`Interrupted` once it has; past ``timeout_s`` it is stopped and the result says 124."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            while process.poll() is None:
                if stop.wait(POLL_S):
                    _stop(process, signal.SIGINT)
                    raise Interrupted(stop.signal_name)
                if time.monotonic() - started > timeout_s:
                    _stop(process, signal.SIGTERM)
                    return StageResult(124, time.monotonic() - started, log)
        except BaseException:
            if process.poll() is None:
                _stop(process, signal.SIGTERM)
            raise
    return StageResult(process.returncode, time.monotonic() - started, log)


class ServerError(RuntimeError):
    """The server exited or did not get ready; the message carries its log's last lines."""


class ServerProcess:
    """``ipsbench-serve`` on loopback with free ports, serving one model; ready when it says so."""

    def __init__(self, repository: Path, model: str, log: Path) -> None:
        self.repository = repository
        self.model = model
        self.log = log
        self.target = ""
        self.metrics_url = ""
        self._process: subprocess.Popen | None = None

    def start(self, stop: StopFlag, timeout_s: float) -> None:
        argv = command("ipsbench-serve") + [
            "--model-repository", str(self.repository), "--grpc-port", "0", "--metrics-port", "0",
            "--model-control-mode", "explicit", "--load-model", self.model,
        ]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w", encoding="utf-8") as out:
            self._process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self._announced(READY_LINE):
            if self._process.poll() is not None:
                raise ServerError(f"ipsbench-serve exited ({self._process.returncode}) before it was ready: "
                                  f"{StageResult(1, 0, self.log).tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"ipsbench-serve not ready after {timeout_s:g} s: "
                                  f"{StageResult(1, 0, self.log).tail()}")
            if stop.wait(POLL_S):
                self.stop()
                raise Interrupted(stop.signal_name)
        self.target = self._announced(LISTENING_PREFIX) or ""
        self.metrics_url = self._announced(METRICS_PREFIX) or ""

    def _announced(self, prefix: str) -> str | None:
        """The rest of the first log line starting with ``prefix`` (the whole line for the ready line)."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip() if prefix != READY_LINE else line
        return None

    def stop(self) -> int | None:
        """SIGTERM (the server drains and exits), bounded; its exit status."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            _stop(self._process, signal.SIGTERM)
        return self._process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
