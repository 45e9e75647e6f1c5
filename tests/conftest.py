"""Shared fixtures: an exported model repository, real ipsbench-serve processes on free ports, tiny test models.

* ``model_repository`` (session): ``ipsbench-export resnet18 --image-size 64 --max-batch-size 8`` into a temp dir.
* ``torchscript_repository`` (session): the same network and seed as TorchScript (``resnet18_pt``, KIND_CPU, FP32).
* ``torchscript_gpu_export`` (session): the same as TorchScript for KIND_GPU in FP16 (``resnet18_gpu``), verified on
  the GPU where CUDA is available and on the CPU in FP32 elsewhere; an :class:`ExportRun` with the CLI's stdout.
* ``start_server(repository, *extra_args)`` (function scope; ``start_module_server`` for module scope): launches
  ``python -m server`` on ports 0, parses the bound ports from its stdout, waits until ServerReady answers true, and
  stops it (SIGTERM, then kill after a bound) when the test or module ends. Returns a :class:`ServerProcess`.
* ``server`` (module): a running server on ``model_repository``.
* ``write_test_model(repository, name, ...)``: small ONNX models built with ``onnx.helper`` (an affine model and a
  deliberately slow one) with their config.pbtxt, for queue, shutdown and error tests.
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

    if importlib.util.find_spec("export.cli") is None:
        pytest.fail("the export CLI (export/cli.py) is missing: the repository fixtures need it", pytrace=False)
    cmd = [sys.executable, "-m", "export.cli", "resnet18", "--image-size", "64", "--max-batch-size", "8"]
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
    """A running ``python -m server``; ``stop()`` sends SIGTERM and returns the exit code."""

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

SLOW_ITERATIONS_PER_MS = 3
"""Loop iterations of a 256x256 MatMul per millisecond, roughly, on one core; slow models are only 'slow enough'."""


def write_test_model(
    repository: Path,
    name: str,
    *,
    kind: str = "affine",
    max_batch_size: int = 8,
    features: int = 4,
    dynamic_batching: bool = True,
    max_queue_delay_us: int = 0,
    max_queue_size: int = 0,
    preferred_batch_sizes: tuple[int, ...] = (),
    instance_count: int = 1,
    delay_ms: int = 0,
    extra_config: str = "",
    version: int = 1,
) -> Path:
    """Write ``repository/name`` with an ONNX model and its config.pbtxt; return the model folder.

    ``kind="affine"``: ``output = 2 * input + 1`` (input and output FP32 ``[features]`` per sample) — each response
    can be checked against its own request. ``kind="slow"``: ``output = input``, after about
    ``delay_ms * max(input)`` of single-threaded compute (so the all-zero warm-up is quick and a request of ones
    takes about ``delay_ms``). ``kind="fragile"``: ``output = input`` for one sample; the engine fails on any
    batch of more than one sample (to test engine errors).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    batch_dims = ["batch"] if max_batch_size > 0 else []
    shape = [*batch_dims, features]
    inits = [
        numpy_helper.from_array(np.array(2, np.float32), "two"),
        numpy_helper.from_array(np.array(1, np.float32), "one"),
    ]
    if kind == "affine":
        nodes = [
            helper.make_node("Mul", ["input", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "one"], ["output"]),
        ]
    elif kind == "slow":
        size = 256
        weights = (np.random.default_rng(0).standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
        body = helper.make_graph(
            [
                helper.make_node("MatMul", ["m_in", "W"], ["product"]),
                helper.make_node("Tanh", ["product"], ["m_out"]),
                helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            ],
            "body",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                helper.make_tensor_value_info("m_in", TensorProto.FLOAT, [size, size]),
            ],
            [
                helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("m_out", TensorProto.FLOAT, [size, size]),
            ],
        )
        nodes = [
            helper.make_node("ReduceMax", ["input"], ["largest"], keepdims=0),
            helper.make_node("Mul", ["largest", "iterations_per_unit"], ["iterations"]),
            helper.make_node("Cast", ["iterations"], ["trip"], to=TensorProto.INT64),
            helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
            helper.make_node("Mul", ["W", "total"], ["m0"]),
            helper.make_node("Loop", ["trip", "cond", "m0"], ["m_last"], body=body),
            helper.make_node("ReduceSum", ["m_last"], ["last_total"], keepdims=0),
            helper.make_node("Mul", ["last_total", "zero"], ["nothing"]),
            helper.make_node("Add", ["input", "nothing"], ["output"]),
        ]
        inits += [
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(np.array(delay_ms * SLOW_ITERATIONS_PER_MS, np.float32), "iterations_per_unit"),
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
        ]
    elif kind == "fragile":
        shape_init = numpy_helper.from_array(np.array([1, features], np.int64), "one_sample")
        nodes = [helper.make_node("Reshape", ["input", "one_sample"], ["output"])]
        inits.append(shape_init)
    else:
        raise ValueError(f"unknown test model kind {kind!r}")
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder = Path(repository) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / str(version) / "model.onnx")

    batching = ""
    if dynamic_batching:
        preferred = "".join(f" preferred_batch_size: {p}" for p in preferred_batch_sizes)
        batching = (
            f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us}{preferred}"
            f" default_queue_policy {{ max_queue_size: {max_queue_size} }} }}\n"
        )
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
        f'input [ {{ name: "input" data_type: TYPE_FP32 dims: [ {features} ] }} ]\n'
        f'output [ {{ name: "output" data_type: TYPE_FP32 dims: [ {features} ] }} ]\n'
        f"{batching}"
        f"instance_group [ {{ count: {instance_count} kind: KIND_CPU }} ]\n"
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
        f"{extra_config}"
    )
    return folder


@pytest.fixture(scope="session", name="write_test_model")
def write_test_model_fixture():
    """The :func:`write_test_model` helper, for test modules in other folders."""
    return write_test_model
