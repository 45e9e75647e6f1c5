"""Shared fixtures: an exported model repository, real ipsbench-serve processes on free ports, tiny test models.

* ``model_repository`` (session): ``ipsbench-export resnet18 --image-size 64 --max-batch-size 8`` into a temp dir.
* ``torchscript_repository`` (session): the same network and seed as TorchScript (``resnet18_pt``, KIND_CPU, FP32).
* ``torchscript_gpu_export`` (session): the same as TorchScript for KIND_GPU in FP16 (``resnet18_gpu``), verified on
  the GPU where CUDA is available and on the CPU in FP32 elsewhere; an :class:`ExportRun` with the CLI's stdout.
* ``start_server(repository, *extra_args)`` (function scope; ``start_module_server`` for module scope): launches
  ``python -m ipsbench.server`` on ports 0, parses the bound ports from its stdout, waits until ServerReady answers true, and
  stops it (SIGTERM, then kill after a bound) when the test or module ends. Returns a :class:`ServerProcess`.
* ``server`` (module): a running server on ``model_repository``.
* ``write_test_model(repository, name, ...)``: small ONNX models built with ``onnx.helper`` (an affine model and a
  deliberately slow one) with their config.pbtxt, for queue, shutdown and error tests.
  (The models themselves are in tests/onnx_test_models.py.)
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from onnx_test_models import write_test_model

ROOT = Path(__file__).resolve().parents[1]
EXPORT_TIMEOUT_S = 600
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 40
GRPC_LINE = re.compile(r"^ipsbench-serve: gRPC listening on (?P<host>[^\s]+):(?P<port>\d+)$")
METRICS_LINE = re.compile(r"^ipsbench-serve: metrics on http://(?P<host>[^\s/]+):(?P<port>\d+)/metrics$")
READY_LINE = "ipsbench-serve: ready"


# -- model repository --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportRun:
    """A finished ``ipsbench-export`` run: the repository it wrote, the model's name there, what it printed."""

    repository: Path
    name: str
    stdout: str


def run_export(out: Path, name: str, *args: str) -> ExportRun:
    """``ipsbench-export`` (resnet18 at 64x64, max_batch_size 8, seed 0) into ``out`` as ``name``; fails the test
    with the CLI's output when it does not write ``name/config.pbtxt``."""
    import importlib.util

    if importlib.util.find_spec("ipsbench.export.cli") is None:
        pytest.fail("the export CLI (export/cli.py) is missing: the repository fixtures need it", pytrace=False)
    cmd = [sys.executable, "-m", "ipsbench.export", "resnet18", "--image-size", "64", "--max-batch-size", "8"]
    cmd += ["--name", name, "--out", str(out), *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"export failed ({result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False)
    if not (out / name / "config.pbtxt").is_file():
        pytest.fail(f"export wrote no {name}/config.pbtxt in {out}:\n{result.stdout}", pytrace=False)
    return ExportRun(out, name, result.stdout)


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory) -> Path:
    """resnet18 at 64x64, max_batch_size 8, exported once per session by the real export CLI."""
    return run_export(tmp_path_factory.mktemp("models"), "resnet18").repository


@pytest.fixture(scope="session")
def torchscript_repository(tmp_path_factory) -> Path:
    """``resnet18_pt``: resnet18 at 64x64 as TorchScript for KIND_CPU in FP32 (the weights of ``model_repository``)."""
    return run_export(tmp_path_factory.mktemp("torchscript"), "resnet18_pt", "--format", "torchscript").repository


@pytest.fixture(scope="session")
def torchscript_gpu_export(tmp_path_factory) -> ExportRun:
    """``resnet18_gpu``: resnet18 at 64x64 as TorchScript for KIND_GPU in FP16 with channels-last (the default on
    GPU). Verified on the GPU where CUDA is available, on the CPU in FP32 elsewhere."""
    args = ("--format", "torchscript", "--device", "gpu", "--precision", "fp16")
    return run_export(tmp_path_factory.mktemp("torchscript-gpu"), "resnet18_gpu", *args)


# -- server processes ----------------------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A running ``python -m ipsbench.server``; ``stop()`` sends SIGTERM and returns the exit code."""

    process: subprocess.Popen
    grpc_port: int
    metrics_port: int | None
    stderr_path: Path
    stdout_lines: list[str] = field(default_factory=list)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        """The server's stderr (its log) so far."""
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def wait_for_line(self, text: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until the server printed ``text`` on stdout (bounded); fail with its log otherwise."""
        deadline = time.monotonic() + timeout_s
        while text not in self.stdout_lines:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"server did not print {text!r}\nstdout:\n"
                    + "\n".join(self.stdout_lines)
                    + "\nlog:\n"
                    + self.log(),
                    pytrace=False,
                )
            time.sleep(0.05)

    def wait_for_log(self, text: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until the server's log contains ``text`` (bounded); fail with its log otherwise."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not log {text!r}\nlog:\n" + self.log(), pytrace=False)
            time.sleep(0.05)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _read_stdout(process: subprocess.Popen, lines: list[str], arrived: threading.Condition) -> None:
    for line in process.stdout:
        with arrived:
            lines.append(line.rstrip("\n"))
            arrived.notify_all()
    with arrived:
        arrived.notify_all()


def launch_server(
    repository: Path | str,
    *extra_args: str,
    log_path: Path,
    wait_ready: bool = True,
    timeout_s: float = READY_TIMEOUT_S,
) -> ServerProcess:
    """Start a server on free ports, its log (stderr) in ``log_path``; return once its ports are known and (by
    default) ServerReady is true."""
    cmd = [
        sys.executable,
        "-m",
        "server",
        "--model-repository",
        str(repository),
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        # One process unless a test asks for front ends: the default follows the machine's cores.
        *(() if any(arg.startswith("--frontends") for arg in extra_args) else ("--frontends", "1")),
        *extra_args,
    ]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            bufsize=1,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    lines: list[str] = []
    arrived = threading.Condition()
    threading.Thread(target=_read_stdout, args=(process, lines, arrived), daemon=True).start()
    handle = ServerProcess(process, 0, None, Path(log_path), lines)
    deadline = time.monotonic() + timeout_s
    want_metrics = "--no-allow-metrics" not in extra_args

    def fail(why: str):
        handle.stop(signal.SIGKILL, 10)
        pytest.fail(
            f"{why}\ncommand: {' '.join(cmd)}\nstdout:\n" + "\n".join(lines) + "\nlog:\n" + handle.log(), pytrace=False
        )

    with arrived:
        while True:
            for line in lines:
                if m := GRPC_LINE.match(line):
                    handle.grpc_port = int(m["port"])
                elif m := METRICS_LINE.match(line):
                    handle.metrics_port = int(m["port"])
            if handle.grpc_port and (handle.metrics_port or not want_metrics):
                break
            if process.poll() is not None:
                fail(f"server exited with code {process.returncode} before printing its ports")
            if time.monotonic() > deadline:
                fail(f"server printed no ports within {timeout_s} s")
            arrived.wait(timeout=0.1)
    if wait_ready:
        _wait_ready(handle, deadline, fail)
    return handle


def _wait_ready(handle: ServerProcess, deadline: float, fail) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with grpcclient.InferenceServerClient(handle.grpc_url) as client:
        while True:
            if handle.process.poll() is not None:
                fail(f"server exited with code {handle.process.returncode} before it was ready")
            try:
                if client.is_server_ready(client_timeout=1.0):
                    return
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                fail("server not ready in time")
            time.sleep(0.05)


class _Launcher:
    """A factory that stops every server it started when its fixture ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ServerProcess] = []

    def __call__(self, repository: Path | str, *extra_args: str, **kwargs) -> ServerProcess:
        log_path = self.log_dir / f"server-{len(self.started)}.log"
        handle = launch_server(repository, *extra_args, log_path=log_path, **kwargs)
        self.started.append(handle)
        return handle

    def stop_all(self) -> None:
        for handle in self.started:
            with contextlib.suppress(Exception):
                handle.stop()


@pytest.fixture
def start_server(tmp_path_factory):
    """``start_server(repository, *extra_args, wait_ready=True)`` → :class:`ServerProcess`, stopped after the test."""
    launcher = _Launcher(tmp_path_factory.mktemp("server-logs"))
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory):
    """Like ``start_server``, but the servers live until the end of the module."""
    launcher = _Launcher(tmp_path_factory.mktemp("server-logs"))
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def server(model_repository, start_module_server) -> ServerProcess:
    """ipsbench-serve on the session's resnet18 repository, shared by the tests of one module."""
    return start_module_server(model_repository)


# -- small test models ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", name="write_test_model")
def write_test_model_fixture():
    """The :func:`write_test_model` helper, for test modules in other folders."""
    return write_test_model
