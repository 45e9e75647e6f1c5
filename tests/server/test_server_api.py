"""Health, metadata, config, statistics and repository RPCs, read with Triton's own client."""

from __future__ import annotations

from importlib import metadata

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_helpers import CALL_TIMEOUT_S, infer_request
from tritonclient.grpc import service_pb2


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def test_live_ready_and_model_ready(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("resnet18")
    assert client.is_model_ready("resnet18", "1")
    assert not client.is_model_ready("resnet18", "7")
    assert not client.is_model_ready("nope")


def test_server_metadata_names_ipsbench_and_its_extensions(client):
    meta = client.get_server_metadata()
    assert meta.name == "ipsbench"
    assert meta.version == metadata.version("ipsbench")
    assert set(meta.extensions) == {
        "classification",
        "model_configuration",
        "model_repository",
        "schedule_policy",
        "statistics",
        "system_shared_memory",
        "cuda_shared_memory",
    }


def test_model_metadata_has_batch_dim_and_platform(client):
    meta = client.get_model_metadata("resnet18")
    assert meta.name == "resnet18"
    assert list(meta.versions) == ["1"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 3, 64, 64])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("output", "FP32", [-1, 1000])]


def test_model_config_is_the_parsed_config_pbtxt(client, model_repository):
    config = client.get_model_config("resnet18").config
    assert config.name == "resnet18"
    assert config.max_batch_size == 8
    assert config.backend == "onnxruntime"
    assert list(config.input[0].dims) == [3, 64, 64]
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000
    assert config.instance_group[0].count == 1


def test_repository_index_lists_the_ready_model(client):
    index = client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [("resnet18", "1", "READY")]


def test_statistics_count_requests_like_triton(client, stub, valid_input):
    before = client.get_inference_statistics("resnet18").model_stats[0]
    batch = np.concatenate([valid_input] * 3)
    for _ in range(2):
        stub.ModelInfer(infer_request("resnet18", batch), timeout=CALL_TIMEOUT_S)
    after = client.get_inference_statistics("resnet18").model_stats[0]
    assert (after.name, after.version) == ("resnet18", "1")
    stats, previous = after.inference_stats, before.inference_stats
    assert stats.success.count - previous.success.count == 2
    assert after.inference_count - before.inference_count == 6
    assert after.execution_count - before.execution_count == 2  # sequential requests: one execution each
    for field in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert getattr(stats, field).count - getattr(previous, field).count == 2
    assert stats.compute_infer.ns > previous.compute_infer.ns
    assert stats.success.ns - previous.success.ns >= stats.compute_infer.ns - previous.compute_infer.ns
    sizes = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
    assert sizes.get(3, 0) >= 2
    assert after.last_inference > 0
    # Every model, and one version
    assert [m.name for m in client.get_inference_statistics().model_stats] == ["resnet18"]
    assert client.get_inference_statistics("resnet18", "1").model_stats[0].version == "1"


def test_statistics_of_unknown_model_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="nope"), timeout=CALL_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_follows_readiness_and_rejects_unknown_services(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=CALL_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_unsupported_rpcs_are_unimplemented_with_a_message(stub, channel):
    with pytest.raises(grpc.RpcError) as err:
        stub.LogSettings(service_pb2.LogSettingsRequest(), timeout=CALL_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "LogSettings is not supported" in err.value.details()

    nope = channel.unary_unary("/inference.GRPCInferenceService/Nope")
    with pytest.raises(grpc.RpcError) as err:
        nope(b"", timeout=CALL_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_server_reflection_is_off(channel):
    for service in ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"):
        reflection = channel.stream_stream(f"/{service}/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as err:
            list(reflection(iter([b""]), timeout=CALL_TIMEOUT_S))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
