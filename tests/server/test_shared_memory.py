"""Triton's shared-memory extension on ipsbench-serve, through tritonclient's own shm utilities: registration, status,
inference whose tensors live in regions, Triton's texts for bad regions and parameters, and the server's bounds."""

from __future__ import annotations

import base64
import os
import socket
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from server_helpers import CALL_TIMEOUT_S, metric, scrape
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException
from waiting import wait_until

FEATURES = 4
SAMPLE_BYTES = FEATURES * 4
SLOW_MS = 300
LONG_UNITS = 8


@pytest.fixture(scope="module")
def repository(tmp_path_factory, write_test_model):
    repo = tmp_path_factory.mktemp("shm-models")
    write_test_model(repo, "affine", max_batch_size=8, features=FEATURES)
    write_test_model(repo, "slow", kind="slow", delay_ms=SLOW_MS, max_batch_size=1, features=FEATURES)
    return repo


@pytest.fixture(scope="module")
def server(repository, start_module_server):
    return start_module_server(repository, "--shm-max-regions", "6", "--shm-max-mb", "2")


@pytest.fixture
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        c.unregister_system_shared_memory()
        yield c
        c.unregister_system_shared_memory()


@pytest.fixture
def regions():
    """``make(name, byte_size)`` → a region created with tritonclient's shm utilities (key ``/<test pid>-<name>``),
    destroyed after the test."""
    made = []

    def make(name: str, byte_size: int):
        handle = shm.create_shared_memory_region(name, key(name), byte_size)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def key(name: str) -> str:
    return f"/ipsbench-test-{os.getpid()}-{name}"


def shm_infer(client, model, rows, in_name="in", out_name="out", in_size=None, out_size=None, out_offset=0, **kw):
    inputs = [grpcclient.InferInput("input", [rows, FEATURES], "FP32")]
    inputs[0].set_shared_memory(in_name, rows * SAMPLE_BYTES if in_size is None else in_size)
    outputs = [grpcclient.InferRequestedOutput("output")]
    outputs[0].set_shared_memory(out_name, rows * SAMPLE_BYTES if out_size is None else out_size, offset=out_offset)
    return client.infer(model, inputs, outputs=outputs, client_timeout=CALL_TIMEOUT_S, **kw)


def refused(call, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as err:
        call(*args, **kwargs)
    return err.value.status(), err.value.message()


def test_server_metadata_lists_the_extensions(client):
    extensions = client.get_server_metadata().extensions
    assert "system_shared_memory" in extensions and "cuda_shared_memory" in extensions


def test_inference_reads_inputs_from_and_writes_outputs_into_regions(client, regions):
    x = np.arange(2 * FEATURES, dtype=np.float32).reshape(2, FEATURES)
    source, target = regions("in", x.nbytes), regions("out", x.nbytes)
    shm.set_shared_memory_region(source, [x])
    client.register_system_shared_memory("in", key("in"), x.nbytes)
    client.register_system_shared_memory("out", key("out"), x.nbytes)
    status = client.get_system_shared_memory_status()
    assert {(r.name, r.key, r.byte_size) for r in status.regions.values()} == {
        ("in", key("in"), x.nbytes), ("out", key("out"), x.nbytes)}

    result = shm_infer(client, "affine", 2)
    output = result.get_output("output")
    assert (output.datatype, list(output.shape)) == ("FP32", [2, FEATURES])
    assert result.get_response().raw_output_contents == [b""]  # nothing in band: the data is in the region
    np.testing.assert_array_equal(shm.get_contents_as_numpy(target, np.float32, [2, FEATURES]), 2 * x + 1)

    # A new payload written into the same region is what the next request reads: no copy was kept.
    shm.set_shared_memory_region(source, [x + 1])
    shm_infer(client, "affine", 2)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(target, np.float32, [2, FEATURES]), 2 * x + 3)

    client.unregister_system_shared_memory("out")
    assert list(client.get_system_shared_memory_status().regions) == ["in"]
    client.unregister_system_shared_memory()
    assert not client.get_system_shared_memory_status().regions


def test_a_region_at_an_offset_of_its_object(client, regions):
    page = 4096
    handle = regions("both", page + 2 * SAMPLE_BYTES)
    x = np.ones((1, FEATURES), np.float32)
    shm.set_shared_memory_region(handle, [x], offset=page)
    # The region starts 3 bytes into the object (not on a page boundary); the tensors' offsets are the region's.
    client.register_system_shared_memory("both", key("both"), page + 2 * SAMPLE_BYTES - 3, offset=3)
    inputs = [grpcclient.InferInput("input", [1, FEATURES], "FP32")]
    inputs[0].set_shared_memory("both", SAMPLE_BYTES, offset=page - 3)
    outputs = [grpcclient.InferRequestedOutput("output")]
    outputs[0].set_shared_memory("both", SAMPLE_BYTES, offset=page - 3 + SAMPLE_BYTES)
    client.infer("affine", inputs, outputs=outputs, client_timeout=CALL_TIMEOUT_S)
    got = shm.get_contents_as_numpy(handle, np.float32, [1, FEATURES], offset=page + SAMPLE_BYTES)
    np.testing.assert_array_equal(got, 2 * x + 1)


def test_registration_is_refused_with_tritons_texts(client, regions):
    regions("r", 64)
    client.register_system_shared_memory("r", key("r"), 64)
    assert refused(client.register_system_shared_memory, "r", key("r"), 64) == (
        "StatusCode.ALREADY_EXISTS", "shared memory region 'r' already in manager")
    for offset, size in ((0, 65), (1, 64), (64, 1), (0, 0)):
        assert refused(client.register_system_shared_memory, "r2", key("r"), size, offset=offset) == (
            "StatusCode.INVALID_ARGUMENT", "failed to register shared memory region 'r2': invalid args")
    assert refused(client.register_system_shared_memory, "x", "/ipsbench-no-such-object", 8) == (
        "StatusCode.INVALID_ARGUMENT", "Unable to open shared memory region: '/ipsbench-no-such-object'")
    # The key names a plain object in the shared-memory folder: nothing else on the server's filesystem.
    for bad in ("/", "///", "..", "/..", "/../etc/passwd", "a/b", "/dev/shm/x", "x\x00y", "", "/" + "a" * 300):
        status, message = refused(client.register_system_shared_memory, "x", bad, 8)
        assert status == "StatusCode.INVALID_ARGUMENT"
        assert message.startswith("cannot register shared memory region 'x' - invalid shm key"), message
    assert list(client.get_system_shared_memory_status().regions) == ["r"]
    assert refused(client.get_system_shared_memory_status, "nope") == (
        "StatusCode.NOT_FOUND", "Unable to find system shared memory region: 'nope'")
    client.unregister_system_shared_memory("nope")  # unknown names are no error, as in Triton


def test_bounds_on_regions_and_mapped_bytes(client, regions):
    for i in range(6):
        regions(f"r{i}", 64)
        client.register_system_shared_memory(f"r{i}", key(f"r{i}"), 64)
    regions("extra", 64)
    status, message = refused(client.register_system_shared_memory, "extra", key("extra"), 64)
    assert status == "StatusCode.RESOURCE_EXHAUSTED" and "--shm-max-regions" in message
    client.unregister_system_shared_memory()
    regions("big", 3 * 1024 * 1024)
    status, message = refused(client.register_system_shared_memory, "big", key("big"), 3 * 1024 * 1024)
    assert status == "StatusCode.RESOURCE_EXHAUSTED" and "--shm-max-mb" in message
    client.register_system_shared_memory("big", key("big"), 2 * 1024 * 1024)  # exactly the bound
    status, _ = refused(client.register_system_shared_memory, "extra", key("extra"), 64)
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    client.unregister_system_shared_memory("big")
    client.register_system_shared_memory("extra", key("extra"), 64)


def test_requests_naming_bad_regions_get_tritons_texts(client, regions):
    x = np.ones((1, FEATURES), np.float32)
    regions("in", 2 * SAMPLE_BYTES)
    regions("out", SAMPLE_BYTES)
    client.register_system_shared_memory("in", key("in"), 2 * SAMPLE_BYTES)
    client.register_system_shared_memory("out", key("out"), SAMPLE_BYTES)
    cases = [
        (dict(in_name="nope"), "StatusCode.NOT_FOUND", "Unable to find shared memory region: 'nope'"),
        (dict(in_size=2 * SAMPLE_BYTES), "StatusCode.INVALID_ARGUMENT",
         "input byte size mismatch for input 'input' for model 'affine'. Expected 16, got 32"),
        (dict(out_offset=SAMPLE_BYTES), "StatusCode.INVALID_ARGUMENT",
         "Invalid offset for shared memory region: 'out'"),
        (dict(out_offset=1), "StatusCode.INVALID_ARGUMENT",
         "Invalid offset + byte size for shared memory region: 'out'"),
        (dict(out_size=SAMPLE_BYTES - 4, out_offset=0), "StatusCode.INVALID_ARGUMENT",
         "shared memory size specified with the request for output 'output' (12 bytes) should be at least 16 bytes "
         "to hold the results"),
    ]
    for kwargs, code, text in cases:
        assert refused(shm_infer, client, "affine", 1, **kwargs) == (code, text), kwargs
    shm.set_shared_memory_region(regions("ok", SAMPLE_BYTES), [x])
    client.register_system_shared_memory("ok", key("ok"), SAMPLE_BYTES)
    shm_infer(client, "affine", 1, in_name="ok")  # the server still serves


def _raw_request(parameters: dict, contents: bool = False) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="affine")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, FEATURES])
    for name, value in parameters.items():
        tensor.parameters[name].CopyFrom(value)
    if contents:
        tensor.contents.fp32_contents.extend([1.0] * FEATURES)
    return request


def test_shared_memory_parameters_are_checked_with_tritons_texts(server, client, regions):
    regions("in", SAMPLE_BYTES)
    client.register_system_shared_memory("in", key("in"), SAMPLE_BYTES)
    region = service_pb2.InferParameter(string_param="in")
    size = service_pb2.InferParameter(int64_param=SAMPLE_BYTES)
    cases = [
        ({"shared_memory_byte_size": size}, "'shared_memory_byte_size' can not be specified without "
         "'shared_memory_region' parameter for tensor 'input'"),
        ({"shared_memory_region": region}, "'shared_memory_byte_size' must be specified along with "
         "'shared_memory_region' parameter for tensor 'input'"),
        ({"shared_memory_region": size, "shared_memory_byte_size": size},
         "invalid value type for 'shared_memory_region' parameter for tensor 'input', expected string_param."),
        ({"shared_memory_region": region, "shared_memory_byte_size": region},
         "invalid value type for 'shared_memory_byte_size' parameter for tensor 'input', expected int64_param."),
        ({"shared_memory_region": region, "shared_memory_byte_size": size,
          "shared_memory_offset": service_pb2.InferParameter(int64_param=-8)},
         "Invalid offset for shared memory region: 'in'"),
    ]
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for parameters, text in cases:
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(_raw_request(parameters), timeout=CALL_TIMEOUT_S)
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, text)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(_raw_request({"shared_memory_region": region, "shared_memory_byte_size": size}, True),
                            timeout=CALL_TIMEOUT_S)
        assert err.value.details() == (
            "unexpected 'content' provided when using shared memory for input tensor 'input' for model 'affine'")


def test_a_region_unregistered_during_a_request_stays_mapped_until_it_is_done(server, client, regions):
    x = np.full((1, FEATURES), LONG_UNITS, np.float32)  # keeps the slow model busy for LONG_UNITS x SLOW_MS
    shm.set_shared_memory_region(regions("in", SAMPLE_BYTES), [x])
    target = regions("out", SAMPLE_BYTES)
    client.register_system_shared_memory("in", key("in"), SAMPLE_BYTES)
    client.register_system_shared_memory("out", key("out"), SAMPLE_BYTES)
    done = []
    worker = threading.Thread(target=lambda: done.append(shm_infer(client, "slow", 1)))
    worker.start()
    wait_until(lambda: metric(scrape(server.metrics_url), "ipsbench_inflight_requests", model="slow", version="1"),
               what="the request in flight")
    client.unregister_system_shared_memory()
    assert not client.get_system_shared_memory_status().regions
    worker.join(CALL_TIMEOUT_S)
    assert done, "the request did not finish"
    np.testing.assert_array_equal(shm.get_contents_as_numpy(target, np.float32, [1, FEATURES]), x)
    # Its names are free again, and a request naming them now is refused.
    assert refused(shm_infer, client, "affine", 1)[1] == "Unable to find shared memory region: 'in'"


def test_an_object_shrunk_under_its_region_is_refused_not_read(client, regions):
    handle = regions("in", 4096)
    regions("out", SAMPLE_BYTES)
    client.register_system_shared_memory("in", key("in"), 4096)
    client.register_system_shared_memory("out", key("out"), SAMPLE_BYTES)
    os.truncate(f"/dev/shm/{key('in').lstrip('/')}", 0)
    assert refused(shm_infer, client, "affine", 1) == (
        "StatusCode.INVALID_ARGUMENT", f"Invalid shared memory region: '{key('in')}'")
    assert handle is not None
    assert client.is_server_live()


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(has_cuda(), reason="this machine has CUDA: see tests/server/test_cuda_shared_memory.py")
def test_cuda_registration_without_cuda_is_unimplemented(client):
    status, message = refused(client.register_cuda_shared_memory, "c", base64.b64encode(b"\0" * 64), 0, 64)
    assert status == "StatusCode.UNIMPLEMENTED"
    assert message.startswith("failed to register CUDA shared memory region: 'c', GPUs not supported")
    assert not client.get_cuda_shared_memory_status().regions
    client.unregister_cuda_shared_memory()  # nothing to unregister is no error (perf_analyzer does this first)


def this_hosts_address() -> str | None:
    """A non-loopback address of this machine (the one a route out would use; nothing is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_only_a_client_on_the_servers_host_may_register(repository, start_server, regions):
    address = this_hosts_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect through")
    server = start_server(repository, "--host", "0.0.0.0")
    regions("r", 64)
    with grpcclient.InferenceServerClient(f"{address}:{server.grpc_port}") as remote:
        status, message = refused(remote.register_system_shared_memory, "r", key("r"), 64)
        assert status == "StatusCode.PERMISSION_DENIED"
        assert message.startswith("shared memory regions can be registered only by clients on the server's host")
        assert not remote.get_system_shared_memory_status().regions
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as local:
        local.register_system_shared_memory("r", key("r"), 64)
        local.unregister_system_shared_memory()
