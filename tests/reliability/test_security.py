"""The security checklist (RELIABILITY.md items 1–13), one test per item where one can be written.

Items covered elsewhere: 2 by F17 (test_server_faults.py), 4 also by B10/B11 and tests/server's repository
tests, 5 by tests/lint/test_unsafe_loading.py, 8 also by B13/B14, 9 by B15, F01 and F08. Item 7 (TensorRT
engines) needs a GPU. See docs/reliability-matrix.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from reliability_helpers import CALL_TIMEOUT_S, ROOT, bytes_request, infer_request, rpc_error, scrape, write_image_model
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ipsbench.export.preprocess_front import write_preprocess_front
from ipsbench.server.preprocess.recipe import Recipe


@pytest.fixture(scope="module")
def repository(tmp_path_factory, write_test_model):
    repo = tmp_path_factory.mktemp("security-models")
    write_test_model(repo, "affine")
    write_image_model(repo, "image8")
    return repo


@pytest.fixture(scope="module")
def server(repository, start_module_server):
    return start_module_server(repository)


@pytest.fixture(scope="module")
def stub(server, channel_to):
    return service_pb2_grpc.GRPCInferenceServiceStub(channel_to(server.grpc_url))


LOOPBACK_HEX = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
"""127.0.0.1, ::1 and ::ffff:127.0.0.1 as /proc/net/tcp{,6} write them."""


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_S01_binds_to_loopback_by_default_and_says_how_to_widen(server):
    for port in (server.grpc_port, server.metrics_port):
        addresses = _listening_addresses(port)
        assert addresses, f"nothing listens on {port}"
        assert addresses <= LOOPBACK_HEX, addresses
    assert any(line.startswith("ipsbench-serve: gRPC listening on 127.0.0.1:") for line in server.stdout_lines)
    assert "--host 0.0.0.0" in server.log()


def test_S03_repository_load_is_refused_without_explicit_model_control(stub, repository):
    error = rpc_error(stub.RepositoryModelLoad, service_pb2.RepositoryModelLoadRequest(model_name="affine"),
                      timeout=CALL_TIMEOUT_S)
    assert error.code() != grpc.StatusCode.OK
    error = rpc_error(stub.RepositoryModelUnload, service_pb2.RepositoryModelUnloadRequest(model_name="affine"),
                      timeout=CALL_TIMEOUT_S)
    assert error.code() != grpc.StatusCode.OK
    assert stub.ModelReady(service_pb2.ModelReadyRequest(name="affine"), timeout=CALL_TIMEOUT_S).ready


def _onnx_with_external_initializer(folder: Path, location: str) -> None:
    """An affine-like model whose one weight lives in external data at ``location`` (relative to the model)."""
    from onnx import TensorProto, helper

    weight = TensorProto(name="two", data_type=TensorProto.FLOAT)
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "two"], ["output"])], "external",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.onnx").write_bytes(model.SerializeToString())


@pytest.mark.parametrize("location", ["../../../../../../../../etc/passwd", "/etc/passwd", "../secret.bin"])
def test_S06_onnx_external_data_outside_the_model_folder_fails_to_load(tmp_path, write_test_model, location):
    repo = tmp_path / "models"
    folder = write_test_model(repo, "external")
    (folder / "1" / "model.onnx").unlink()
    _onnx_with_external_initializer(folder, location)
    (folder / "secret.bin").write_bytes(np.float32(2).tobytes())  # exists, but outside the version folder
    result = subprocess.run(
        [sys.executable, "-m", "ipsbench.server", "--model-repository", str(repo), "--grpc-port", "0", "--metrics-port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "load failed for model 'external'" in result.stderr
    assert re.search(r"external.data", result.stderr, re.IGNORECASE), result.stderr
    assert "root:" not in result.stderr and "ipsbench-serve: ready" not in result.stdout


def test_S08_encoded_images_over_the_byte_limit_are_refused_unread(tmp_path, start_server):
    write_image_model(tmp_path, "image8")
    write_preprocess_front(tmp_path, "image8", "jpeg", Recipe(crop=8, resize=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    srv = start_server(tmp_path)
    oversized = b"\xff\xd8\xff" + bytes(11 * 1024 * 1024)  # a JPEG magic, then 11 MiB: over the 10 MiB default
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        error = rpc_error(stub.ModelInfer, bytes_request("image8_jpeg", [oversized]), timeout=CALL_TIMEOUT_S)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "bytes" in error.details() and "limit" in error.details()


def test_S09_message_and_concurrency_bounds_are_explicit(serve_help):
    def default_of(flag: str) -> int:
        match = re.search(rf"^\s+{flag}\s.*?\(default:\s+(\d+)\)", serve_help, re.S | re.M)
        assert match, f"{flag} has no stated default"
        return int(match[1])

    default_mb = default_of("--grpc-max-message-mb")
    assert 32 <= default_mb < 2048  # large enough for a batch of images, never INT32_MAX
    rpcs = default_of("--grpc-max-concurrent-rpcs")
    assert 0 < rpcs < 1_000_000


def test_S10_metric_labels_come_only_from_loaded_models(server, stub):
    names = [f"attacker-{i}-{'x' * i}" for i in range(40)] + ["../etc", "a\"b", "label}{injection"]
    for name in names:
        for call, request in (
            (stub.ModelInfer, infer_request(name, np.ones((1, 4), np.float32))),
            (stub.ModelMetadata, service_pb2.ModelMetadataRequest(name=name)),
            (stub.ModelStatistics, service_pb2.ModelStatisticsRequest(name=name)),
        ):
            rpc_error(call, request, timeout=CALL_TIMEOUT_S)
    samples = scrape(server.metrics_url)
    models = {value for _, labels in samples for key, value in labels if key == "model"}
    assert models <= {"affine", "image8"}, models
    assert samples[("ipsbench_unknown_model_requests_total", frozenset())] >= len(names)


def test_S10_metrics_can_be_turned_off(repository, start_server):
    srv = start_server(repository, "--no-allow-metrics")
    assert not any("metrics on" in line for line in srv.stdout_lines)


def test_S11_errors_carry_no_paths_or_tracebacks(tmp_path, write_test_model, start_server):
    repo = tmp_path / "models"
    write_test_model(repo, "affine")
    broken = write_test_model(repo, "broken")
    (broken / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    srv = start_server(repo, "--no-exit-on-error", wait_ready=False)
    srv.wait_for_log("failed to load")
    texts = []
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=CALL_TIMEOUT_S)
        texts += [model.reason for model in index.models]
        for request in (
            infer_request("broken", np.ones((1, 4), np.float32)),
            infer_request("affine", np.ones((1, 5), np.float32)),
            infer_request("affine", np.ones((1, 4), np.float16), datatype="FP16"),
        ):
            texts.append(rpc_error(stub.ModelInfer, request, timeout=CALL_TIMEOUT_S).details())
    assert any(texts), texts
    for text in texts:
        assert "Traceback" not in text and 'File "' not in text, text
        assert str(tmp_path) not in text and "/1/model.onnx" not in text, text


def test_S12_no_reflection_service(server, channel_to):
    reflection = channel_to(server.grpc_url).stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=None, response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError) as err:
        list(reflection(iter([b"\x3a\x00"]), timeout=CALL_TIMEOUT_S))  # list_services
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_S12_health_answers_only_serving_states(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert reply.ListFields() == [(health_pb2.HealthCheckResponse.DESCRIPTOR.fields_by_name["status"], 1)]


DOCKERFILES = sorted((ROOT / "deploy" / "docker").glob("*Dockerfile*"))


def test_the_server_load_and_export_images_have_dockerfiles():
    assert {path.name.split(".")[0] for path in DOCKERFILES} >= {"server", "loadgen", "export"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_S13_containers_run_as_a_non_root_user(dockerfile):
    users = [line.split(None, 1)[1].strip() for line in dockerfile.read_text().splitlines()
             if line.strip().upper().startswith("USER ")]
    assert users, f"{dockerfile.name} has no USER instruction (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{dockerfile.name} runs as {users[-1]}"

