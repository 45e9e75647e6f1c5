"""gRPC access to a KServe v2 target: plain metadata RPCs, and ModelInfer over pre-serialized bytes."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MIN_MESSAGE_BYTES = 64 * 1024 * 1024
"""Smallest send/receive message limit; raised for requests larger than a quarter of it."""
METADATA_DEADLINE_S = 10.0


_grpc_gevent_ready = False


def init_grpc_gevent() -> None:
    """Make grpcio cooperate with gevent (required before the first channel of a locust process)."""
    global _grpc_gevent_ready
    if not _grpc_gevent_ready:
        from grpc.experimental import gevent as grpc_gevent

        grpc_gevent.init_gevent()
        _grpc_gevent_ready = True


class TargetError(RuntimeError):
    """The target cannot be used (unreachable, unknown model, not ready)."""


def channel_options(request_bytes: int) -> list[tuple[str, int]]:
    """Message limits large enough for the biggest request (and a response of the same order)."""
    limit = max(MIN_MESSAGE_BYTES, 4 * request_bytes)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]


def open_channel(target: str, request_bytes: int = 0) -> grpc.Channel:
    """An insecure channel to ``target`` (host:port) with raised message limits and default keepalive."""
    return grpc.insecure_channel(target, options=channel_options(request_bytes))


def model_infer_bytes(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """ModelInfer taking an already serialized ModelInferRequest (bytes) and returning a parsed response."""
    return channel.unary_unary(
        MODEL_INFER_METHOD,
        request_serializer=None,
        response_deserializer=service_pb2.ModelInferResponse.FromString,
    )


@dataclass(frozen=True)
class ModelInfo:
    """What the target says about the model before the run."""

    metadata: service_pb2.ModelMetadataResponse
    max_batch_size: int | None
    """From Triton's ModelConfig extension; None where the target does not implement it."""
    server: dict


def describe_model(channel: grpc.Channel, model: str, version: str, deadline_s: float = METADATA_DEADLINE_S) -> ModelInfo:
    """ServerMetadata, ModelReady and ModelMetadata (KServe v2), plus ModelConfig where the target offers it."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        server = stub.ServerMetadata(service_pb2.ServerMetadataRequest(), timeout=deadline_s)
        ready = stub.ModelReady(service_pb2.ModelReadyRequest(name=model, version=version), timeout=deadline_s)
        if not ready.ready:
            raise TargetError(f"model {model!r} is not ready on the target")
        metadata = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=model, version=version), timeout=deadline_s)
    except grpc.RpcError as error:
        raise TargetError(f"{error.code().name}: {error.details()}") from error
    return ModelInfo(
        metadata=metadata,
        max_batch_size=_max_batch_size(stub, model, version, deadline_s),
        server={"name": server.name, "version": server.version, "extensions": list(server.extensions)},
    )


def _max_batch_size(stub: service_pb2_grpc.GRPCInferenceServiceStub, model: str, version: str, deadline_s: float):
    try:
        response = stub.ModelConfig(service_pb2.ModelConfigRequest(name=model, version=version), timeout=deadline_s)
    except grpc.RpcError as error:
        if error.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND):
            return None
        raise TargetError(f"ModelConfig: {error.code().name}: {error.details()}") from error
    config: model_config_pb2.ModelConfig = response.config
    return config.max_batch_size
