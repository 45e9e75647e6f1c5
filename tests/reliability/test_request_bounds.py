"""Request fields that could multiply work or memory, or come back in an error at full length (matrix rows
B18–B20), against a real ipsbench-serve; and server options out of range refused before anything starts (F24)."""

from __future__ import annotations

import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from reliability_helpers import CALL_TIMEOUT_S, assert_healthy, infer_request, metric, rpc_error, rss_bytes, scrape
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ipsbench.server.errors import QUOTE_LIMIT

DETAILS_BOUND = 1024
"""An error's text stays this short whatever the request held (a quoted field is cut to QUOTE_LIMIT)."""
REPEATS = 150_000
RSS_GROWTH_BOUND = 64 * 1024 * 1024
FEATURES = 1024
"""The affine model's features: each output copy would be 4 KiB per sample."""


@pytest.fixture(scope="module")
def server(tmp_path_factory, write_test_model, start_module_server):
    repo = tmp_path_factory.mktemp("bounds-models")
    write_test_model(repo, "affine")
    write_test_model(repo, "wide", features=FEATURES)
    return start_module_server(repo)


@pytest.fixture(scope="module")
def stub(server, channel_to):
    return service_pb2_grpc.GRPCInferenceServiceStub(channel_to(server.grpc_url))


def _wide_request() -> service_pb2.ModelInferRequest:
    return infer_request("wide", np.ones((8, FEATURES), np.float32))


# -- B18: repeated fields --------------------------------------------------------------------------------------


def test_B18_an_output_named_many_times_is_refused_before_any_work(stub, server):
    request = _wide_request()
    for _ in range(REPEATS):
        request.outputs.add(name="output")
    before = rss_bytes(server.process.pid)
    error = rpc_error(stub.ModelInfer, request, timeout=CALL_TIMEOUT_S)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert error.details() == "output 'output' already requested for model 'wide'"
    # Each repeat would have copied the whole output: 150,000 x 32 KiB. Refused first, nothing grew.
    assert rss_bytes(server.process.pid) - before < RSS_GROWTH_BOUND
    assert_healthy(server.grpc_url)


def test_B18_an_input_given_twice_is_refused(stub, server):
    request = _wide_request()
    request.inputs.append(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])
    error = rpc_error(stub.ModelInfer, request, timeout=CALL_TIMEOUT_S)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "input 'input' already exists in request for model 'wide'"


def test_B18_each_output_asked_once_is_served(stub):
    request = _wide_request()
    request.outputs.add(name="output")
    response = stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    assert [o.name for o in response.outputs] == ["output"]
    assert len(response.raw_output_contents) == 1


# -- B19: client text quoted as a bounded prefix ----------------------------------------------------------------

LONG = "n" * 100_000


def _with_long(field: str) -> service_pb2.ModelInferRequest:
    request = infer_request("affine", np.ones((1, 4), np.float32))
    if field == "input name":
        request.inputs[0].name = LONG
    elif field == "datatype":
        request.inputs[0].datatype = LONG
    elif field == "output name":
        request.outputs.add(name=LONG)
    elif field == "shape":
        del request.inputs[0].shape[:]
        request.inputs[0].shape.extend([1] * 100_000)
    elif field == "classification output":
        output = request.outputs.add(name=LONG)
        output.parameters["classification"].string_param = "3"
    return request


@pytest.mark.parametrize("field", ["input name", "datatype", "output name", "shape", "classification output"])
def test_B19_an_error_quotes_a_huge_field_as_a_bounded_prefix(stub, server, field):
    error = rpc_error(stub.ModelInfer, _with_long(field), timeout=CALL_TIMEOUT_S)
    details = error.details() or ""
    # Not RESOURCE_EXHAUSTED ("received metadata size exceeds hard limit"): the text fits in the trailers.
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), details[:200])
    assert len(details) < DETAILS_BOUND, len(details)
    assert "..." in details  # says that it was cut
    assert "n" * QUOTE_LIMIT in details or "1," * (QUOTE_LIMIT // 2 - 1) in details  # the prefix is shown
    assert_healthy(server.grpc_url)


@pytest.mark.parametrize("rpc", ["ModelMetadata", "ModelConfig", "ModelStatistics"])
def test_B19_a_huge_model_name_or_version_is_quoted_bounded_in_every_rpc(stub, rpc):
    request_class = getattr(service_pb2, f"{rpc}Request")
    for fields in ({"name": LONG}, {"name": "affine", "version": LONG}):
        error = rpc_error(getattr(stub, rpc), request_class(**fields), timeout=CALL_TIMEOUT_S)
        assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), error.code()
        assert len(error.details() or "") < DETAILS_BOUND


# -- B20: garbage to every RPC ---------------------------------------------------------------------------------

NON_INFERENCE_RPCS = [
    *(f"/inference.GRPCInferenceService/{name}" for name in (
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
        "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    )),
    "/grpc.health.v1.Health/Check",
]


@pytest.mark.parametrize("rpc", NON_INFERENCE_RPCS, ids=lambda path: path.rsplit("/", 1)[1])
def test_B20_garbage_bytes_to_any_rpc_are_internal_in_one_log_line(server, channel_to, rpc):
    raw = channel_to(server.grpc_url).unary_unary(rpc, request_serializer=None, response_deserializer=None)
    garbage = b"\xff\xff\xff\xff\x0f" + random.Random(rpc).randbytes(64)  # an invalid varint tag
    log_before = len(server.log())
    error = rpc_error(raw, garbage, timeout=CALL_TIMEOUT_S)
    assert error.code() == grpc.StatusCode.INTERNAL, (error.code(), error.details())
    assert (error.details() or "").startswith("cannot parse the request")
    assert_healthy(server.grpc_url)
    assert "Traceback" not in server.log()[log_before:]


# -- F23: a bound on the bytes of requests held at once ---------------------------------------------------------

BURST = 64
BURSTS = 6
BURST_FEATURES = 1024 * 1024
"""4 MiB of FP32 per request."""
INFLIGHT_MB = 32


def _peak_rss_bytes(pid: int) -> int:
    """The process's high-water resident set (VmHWM): exact, unlike sampling RSS while a burst runs."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def _burst(url: str, request: bytes) -> list[str]:
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]

    def one(_: int) -> str:
        with grpc.insecure_channel(url, options=options) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            try:
                call(request, timeout=CALL_TIMEOUT_S * 4)
            except grpc.RpcError as error:
                return f"{error.code().name}: {error.details()}"
            return "OK"

    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(one, range(BURST)))


def test_F23_a_burst_of_large_requests_is_bounded_by_max_inflight_mb(tmp_path, write_test_model, start_server):
    # A slow model: without the bound every request of the burst would wait in the queue, each holding its bytes,
    # its share of a batch and its output (about three times the bytes offered, measured).
    write_test_model(tmp_path, "slow", kind="slow", features=BURST_FEATURES, delay_ms=300)
    write_test_model(tmp_path, "affine")
    server = start_server(tmp_path, "--max-inflight-mb", str(INFLIGHT_MB))
    request = infer_request("slow", np.ones((1, BURST_FEATURES), np.float32)).SerializeToString()
    offered = BURST * len(request)
    pid = server.process.pid
    base = max(rss_bytes(pid), 1)
    answers = _burst(server.grpc_url, request)
    refused = [a for a in answers if a.startswith("RESOURCE_EXHAUSTED")]
    assert len(refused) + answers.count("OK") == BURST, sorted(set(answers))
    assert answers.count("OK") >= 1
    assert answers.count("OK") <= INFLIGHT_MB * 1024 * 1024 // len(request) * 2, "more admitted than the bound allows"
    assert all("--max-inflight-mb" in a for a in refused)
    samples = scrape(server.metrics_url)
    assert metric(samples, "ipsbench_requests_refused_for_bytes_total") == len(refused)
    assert metric(samples, "ipsbench_inflight_request_bytes") == 0
    # gRPC receives every message before the server can refuse it, so the peak grows by about the bytes offered;
    # it stays under twice that (without the bound: about three times).
    assert _peak_rss_bytes(pid) - base < 2 * offered, (_peak_rss_bytes(pid) - base, offered)
    for _ in range(BURSTS - 1):
        _burst(server.grpc_url, request)
    # What stays resident after the bursts is bounded, not their sum: gRPC's receive buffers and the allocator
    # keep some (server/allocator.py), measured at two to three bursts' bytes; a leak would keep all six.
    assert rss_bytes(pid) - base < 4 * offered, (rss_bytes(pid) - base, offered)
    assert_healthy(server.grpc_url)


# -- F24: options out of range ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--grpc-max-message-mb", "2048", "must be in 1..2047"),
        ("--grpc-max-message-mb", "0", "must be in 1..2047"),
        ("--grace-period-s", "nan", "must be a finite number"),
        ("--grace-period-s", "-1", "must be in 0..86400"),
        ("--grpc-max-concurrent-rpcs", "0", "must be in 1..1e+06"),
        ("--grpc-port", "70000", "must be in 0..65535"),
        ("--model-repository", "MISSING", "does not exist"),
        ("--admin-token-file", "MISSING", "does not exist"),
        ("--grpc-tls-cert", "REPOSITORY", "is not a file"),
    ],
)
def test_F24_an_option_out_of_range_is_a_usage_error_before_anything_starts(tmp_path, option, value, says):
    repository = tmp_path / "models"
    repository.mkdir()
    value = {"MISSING": str(tmp_path / "missing"), "REPOSITORY": str(repository)}.get(value, value)
    args = ["--model-repository", str(repository), "--grpc-port", "0", "--metrics-port", "0"]
    if option == "--model-repository":
        args[1] = value
    else:
        args += [option, value]
    if option == "--grpc-tls-cert":
        args += ["--grpc-tls-key", str(repository)]
    result = subprocess.run(
        [sys.executable, "-m", "ipsbench.server", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"ipsbench-serve: error: argument {option}: "), result.stderr
    assert says in lines[-1]
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout  # nothing started
