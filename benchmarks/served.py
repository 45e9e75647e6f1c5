"""A gRPC inference server started from a command line for a benchmark: pinned, ready-checked, counted, stopped.

Any command that prints ``... gRPC listening on HOST:PORT`` and then a line ending in ``: ready`` will do (ipsbench-serve
and ``yardstick_servers.py`` both print those), so one more server to measure is one more command line.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import psutil
from _common import REPO_ROOT, pinned

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
STATISTICS_DEADLINE_S = 1.0
FORK_SUPPORT = "GRPC_ENABLE_FORK_SUPPORT"
os.environ.setdefault(FORK_SUPPORT, "false")
"""This process's one gRPC channel (statistics) need not survive the fork of a server or load process; without this,
grpc logs a line at every fork. The servers and perf_analyzer get the environment as it was."""
CHILD_ENV = {k: v for k, v in os.environ.items() if k != FORK_SUPPORT}
LISTENING = re.compile(r"gRPC listening on \S*:(\d+)\s*$")


def server_cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of a server process and all its children, live and reaped (0 once it is gone)."""
    try:
        times = proc.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        children = proc.children(recursive=True)
    except psutil.Error:
        return 0.0
    for child in children:
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


class ServedProcess:
    """One server process on ``core``, ready once it has printed its port and its ready line (a bounded wait)."""

    def __init__(self, label: str, argv: list[str], log_path: Path, core: int) -> None:
        self.label = label
        self.slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower()[:60]
        self.log = log_path.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, preexec_fn=pinned(core), stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=CHILD_ENV)
        self.port: int | None = None
        self._stub = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        print(f"starting {label} ...", flush=True)
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{label} did not become ready: {' '.join(argv)}\n"
                                 f"{log_path.read_text(encoding='utf-8')[-2000:]}")
        self.ps = psutil.Process(self.proc.pid)

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.log.write(line)
            except ValueError:  # stopped: the log is closed
                pass
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
            if line.rstrip().endswith(": ready") and self.port is not None:
                self._ready.set()

    def counts(self, model: str) -> tuple[int, int] | None:
        """The server's successful requests and batch executions for ``model`` so far (ModelStatistics); None if
        it did not answer in time."""
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        if self._stub is None:
            self._channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        try:
            response = self._stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name=model),
                                                  timeout=STATISTICS_DEADLINE_S)
        except grpc.RpcError:
            return None
        return (sum(s.inference_stats.success.count for s in response.model_stats),
                sum(s.execution_count for s in response.model_stats))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a bound; safe to call twice."""
        if self._stub is not None:
            self._channel.close()
            self._stub = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if not self.log.closed:
            self.log.close()
