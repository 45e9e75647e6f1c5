"""Helpers for the reliability tests: request builders, the "server healthy after" check, an image-shaped test
model the load generator can drive, metric scraping, process memory and ipsbench-load subprocess runs.

The test process never imports locust (it patches the whole process for gevent): load runs are subprocesses.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from load_helpers import LoadRun, assert_accounted, start_load_run  # noqa: F401 - re-exported to the tests
from waiting import wait_until  # noqa: F401 - re-exported to the tests
from onnx_test_models import write_image_model  # noqa: F401 - the reliability tests import it from here
from tritonclient.grpc import service_pb2, service_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
CALL_TIMEOUT_S = 30.0
HEALTHY_WITHIN_S = 1.0
""""Server healthy after": a small valid request answers OK within this long (Triton's L0_large_payload)."""
HEALTHY_RETRY_S = 10.0
"""How long the check keeps trying before it fails (the first try after a fault may meet a reconnect)."""


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


def answered_and_failed(futures, code: grpc.StatusCode) -> tuple[int, list[grpc.RpcError]]:
    """Wait for every ModelInfer future: how many were answered, and the errors of the others, each of which must
    carry status ``code``."""
    answered, failed = 0, []
    for future in futures:
        try:
            future.result(timeout=CALL_TIMEOUT_S)
            answered += 1
        except grpc.RpcError as error:
            assert error.code() == code, error.details()
            failed.append(error)
    return answered, failed


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


def server_flags() -> str:
    """``ipsbench-serve --help``: the options this build has, with their defaults."""
    result = subprocess.run(
        [sys.executable, "-m", "ipsbench.server", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    return result.stdout


# -- ipsbench-load subprocess runs: the load generator's own test helpers --------------------------------------

