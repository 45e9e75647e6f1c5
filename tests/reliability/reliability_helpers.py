"""Helpers for the reliability tests: request builders, the "server healthy after" check, an image-shaped test
model the load generator can drive, metric scraping, process memory and ipsbench-load subprocess runs.

The test process never imports locust (it patches the whole process for gevent): load runs are subprocesses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
CALL_TIMEOUT_S = 30.0
HEALTHY_WITHIN_S = 1.0
""""Server healthy after": a small valid request answers OK within this long (Triton's L0_large_payload)."""
HEALTHY_RETRY_S = 10.0
"""How long the check keeps trying before it fails (the first try after a fault may meet a reconnect)."""
SLOW_ITERATIONS_PER_MS = 3
"""Loop iterations of a 256x256 MatMul per millisecond, roughly, on one core (as in tests/conftest.py)."""


# -- requests --------------------------------------------------------------------------------------------------


def infer_request(
    model: str, array: np.ndarray, input_name: str = "input", datatype: str = "FP32", **fields
) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest with one input in ``raw_input_contents``."""
    request = service_pb2.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name=input_name, datatype=datatype, shape=list(array.shape))
    request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request


def bytes_request(model: str, blobs: list[bytes], input_name: str = "image") -> service_pb2.ModelInferRequest:
    """A BYTES input of shape [len(blobs), 1]: each element length-prefixed (4 bytes, little-endian), as KServe v2
    serializes BYTES tensors in ``raw_input_contents``."""
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="BYTES", shape=[len(blobs), 1])
    request.raw_input_contents.append(b"".join(len(b).to_bytes(4, "little") + b for b in blobs))
    return request


def output_array(response: service_pb2.ModelInferResponse, index: int = 0) -> np.ndarray:
    tensor = response.outputs[index]
    return np.frombuffer(response.raw_output_contents[index], dtype=np.float32).reshape(tuple(tensor.shape))


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    """The RpcError ``call`` raised; fails the test when the call succeeded."""
    try:
        result = call(*args, **kwargs)
    except grpc.RpcError as error:
        return error
    pytest.fail(f"expected an RPC error, got {type(result).__name__}: {result}")


# -- "server healthy after" ------------------------------------------------------------------------------------


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S).status


def assert_healthy(url: str, model: str = "affine", features: int = 4) -> None:
    """The matrix's "server healthy after": ``Check("")`` is SERVING and a small valid request to ``model``
    (an affine test model, output 2x+1) returns OK within :data:`HEALTHY_WITHIN_S`. A fresh channel each time,
    so a connection the fault broke does not hide a healthy server (nor a broken one)."""
    deadline = time.monotonic() + HEALTHY_RETRY_S
    x = np.arange(features, dtype=np.float32)[None]
    last = "no attempt"
    while time.monotonic() < deadline:
        with grpc.insecure_channel(url) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=HEALTHY_RETRY_S)
                status = health_status(channel)
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                started = time.monotonic()
                response = stub.ModelInfer(infer_request(model, x), timeout=HEALTHY_WITHIN_S)
                took = time.monotonic() - started
            except (grpc.RpcError, grpc.FutureTimeoutError) as error:
                last = repr(error)
                time.sleep(0.1)
                continue
        assert status == health_pb2.HealthCheckResponse.SERVING, status
        np.testing.assert_allclose(output_array(response), 2 * x + 1)
        assert took < HEALTHY_WITHIN_S
        return
    pytest.fail(f"server at {url} not healthy within {HEALTHY_RETRY_S} s: {last}")


# -- metrics and process figures -------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text page keyed by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"unparseable metrics line: {line!r}"
            samples[(match["name"], frozenset(_LABEL.findall(match["labels"] or "")))] = float(match["value"])
    return samples


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def wait_until(predicate, timeout_s: float = 10.0, what: str = "condition", interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def server_flags() -> str:
    """``ipsbench-serve --help``: which options this build has (rows for features still being built skip)."""
    result = subprocess.run(
        [sys.executable, "-m", "server", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    return result.stdout


# -- an image-shaped model the load generator can drive --------------------------------------------------------


def write_image_model(
    repository: Path,
    name: str,
    *,
    delay_ms: int = 0,
    max_batch_size: int = 8,
    max_queue_size: int = 0,
    max_queue_delay_us: int = 0,
    size: int = 8,
    extra_config: str = "",
) -> Path:
    """``repository/name``: input FP32 [-1,3,size,size], output FP32 [-1,3] (the per-channel mean). With
    ``delay_ms``, every execution first spends about that long in a loop of 256x256 MatMuls (one thread)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2, 3], keepdims=0)]
    inits = []
    if delay_ms:
        width = 256
        weights = (np.random.default_rng(0).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
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
                helper.make_tensor_value_info("m_in", TensorProto.FLOAT, [width, width]),
            ],
            [
                helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("m_out", TensorProto.FLOAT, [width, width]),
            ],
        )
        nodes += [
            helper.make_node("Loop", ["trip", "cond", "W"], ["m_last"], body=body),
            helper.make_node("ReduceSum", ["m_last"], ["last_total"], keepdims=0),
            helper.make_node("Mul", ["last_total", "zero"], ["nothing"]),
            helper.make_node("Add", ["mean", "nothing"], ["output"]),
        ]
        inits += [
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(np.array(delay_ms * SLOW_ITERATIONS_PER_MS, np.int64), "trip"),
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["mean"], ["output"]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder = Path(repository) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "1" / "model.onnx")
    warm_one = (
        'model_warmup [ { name: "one" batch_size: 1 inputs { key: "input" value { data_type: TYPE_FP32 '
        f"dims: [ 3, {size}, {size} ] zero_data: true }} }} }} ]\n"
    )
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
        f'input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]\n'
        'output [ { name: "output" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us}"
        f" default_queue_policy {{ max_queue_size: {max_queue_size} }} }}\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
        f"{warm_one if delay_ms else ''}{extra_config}"
    )
    return folder


# -- ipsbench-load subprocess runs -----------------------------------------------------------------------------


@dataclass
class LoadProcess:
    """A running or finished ``python -m loadgen`` and where its report goes."""

    process: subprocess.Popen
    out: Path
    log: Path
    stdout: str = ""

    def finish(self, timeout_s: float) -> int:
        self.stdout, _ = self.process.communicate(timeout=timeout_s)
        return self.process.returncode

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def report(self) -> dict:
        return json.loads((self.out / "report.json").read_text())

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.stderr():
            if self.process.poll() is not None:
                pytest.fail(f"ipsbench-load exited ({self.process.returncode}) before logging {text!r}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"ipsbench-load did not log {text!r} within {timeout_s} s:\n{self.stderr()}")
            time.sleep(0.05)


def start_load_process(out: Path, log: Path, scenario: str, target: str, model: str, *args: str) -> LoadProcess:
    command = [sys.executable, "-m", "loadgen", scenario, "--target", target, "--model", model, "--out", str(out),
               *args]
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    return LoadProcess(process, out, log)


COUNT_FIELDS = ("ok", "rejected", "failed", "deadline", "cancelled", "abandoned")


def assert_accounted(report: dict) -> None:
    """ISSUED = OK + REJECTED + FAILED + DEADLINE + CANCELLED + ABANDONED on every step and in the totals."""
    assert report["steps"], report
    for step in report["steps"]:
        assert step["issued"] == sum(step[name] for name in COUNT_FIELDS), step
        assert step["identity_holds"], step
    totals = report["totals"]
    assert totals["issued"] == sum(totals[name] for name in COUNT_FIELDS), totals
