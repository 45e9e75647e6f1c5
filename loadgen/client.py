"""gRPC access to a KServe v2 target: plain metadata RPCs, and ModelInfer over pre-serialized bytes."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import grpc
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MIN_MESSAGE_BYTES = 64 * 1024 * 1024
"""Smallest send/receive message limit; raised for requests larger than a quarter of it."""
METADATA_DEADLINE_S = 10.0
MAX_SAID_CHARS = 200
"""A target's error message is quoted up to this many characters."""


class TargetError(RuntimeError):
    """The target cannot be used (unreachable, unknown model, not ready)."""


def is_local_target(target: str) -> bool:
    """Whether ``target`` (host:port) is this host: every address its host resolves to is a loopback one."""
    host = target.rpartition(":")[0].strip("[]")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def channel_options(request_bytes: int) -> list[tuple[str, int]]:
    """Message limits large enough for the biggest request (and a response of the same order)."""
    limit = max(MIN_MESSAGE_BYTES, 4 * request_bytes)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]


def channel_credentials(tls_ca: str = "", tls_cert: str = "", tls_key: str = "") -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM files (the CA verifies the server; certificate and key for mutual TLS), or None
    for plaintext. A file that cannot be read raises TargetError."""
    if not (tls_ca or tls_cert):
        return None

    def read(path: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as error:
            raise TargetError(f"cannot read TLS file {path}: {error.strerror}") from None

    return grpc.ssl_channel_credentials(
        root_certificates=read(tls_ca), private_key=read(tls_key), certificate_chain=read(tls_cert)
    )


def open_channel(
    target: str, request_bytes: int = 0, credentials: grpc.ChannelCredentials | None = None
) -> grpc.Channel:
    """A channel to ``target`` (host:port), TLS when ``credentials`` are given, with raised message limits."""
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=channel_options(request_bytes))
    return grpc.insecure_channel(target, options=channel_options(request_bytes))


def model_infer_bytes(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """ModelInfer taking an already serialized ModelInferRequest (bytes) and returning the serialized response
    (bytes): the send path needs only the status and the size, so a response is parsed only when it is checked
    (:func:`parse_infer_response`)."""
    return channel.unary_unary(MODEL_INFER_METHOD, request_serializer=None, response_deserializer=None)


def parse_infer_response(response: bytes) -> service_pb2.ModelInferResponse:
    """A serialized ModelInferResponse, parsed; ``google.protobuf.message.DecodeError`` when it is not one."""
    return service_pb2.ModelInferResponse.FromString(response)


@dataclass(frozen=True)
class ModelInfo:
    """What the target says about the model before the run."""

    metadata: service_pb2.ModelMetadataResponse
    config: model_config_pb2.ModelConfig | None
    """From Triton's ModelConfig extension; None where the target does not implement it."""
    server: dict

    @property
    def max_batch_size(self) -> int | None:
        return None if self.config is None else self.config.max_batch_size


def describe_model(
    channel: grpc.Channel, model: str, version: str, deadline_s: float = METADATA_DEADLINE_S,
    metadata: tuple[tuple[str, str], ...] = (),
) -> ModelInfo:
    """ServerMetadata, ModelReady and ModelMetadata (KServe v2), plus ModelConfig where the target offers it."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    call = {"timeout": deadline_s, "metadata": metadata or None}
    try:
        server = stub.ServerMetadata(service_pb2.ServerMetadataRequest(), **call)
        ready = stub.ModelReady(service_pb2.ModelReadyRequest(name=model, version=version), **call)
    except grpc.RpcError as error:
        raise TargetError(said(error)) from error
    try:
        # Asked even when the model is not ready: an unknown model or version is only not ready to ModelReady
        # (KServe v2), ModelMetadata says which.
        model_metadata = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=model, version=version), **call)
    except grpc.RpcError as error:
        raise TargetError(f"the target answered ModelMetadata with {said(error)}") from error
    if not ready.ready:
        raise TargetError(f"model {model!r} is not ready on the target (ModelReady says false)")
    return ModelInfo(
        metadata=model_metadata,
        config=_model_config(stub, model, version, call),
        server={"name": server.name, "version": server.version, "extensions": list(server.extensions)},
    )


def _model_config(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, model: str, version: str, call: dict
) -> model_config_pb2.ModelConfig | None:
    try:
        response = stub.ModelConfig(service_pb2.ModelConfigRequest(name=model, version=version), **call)
    except grpc.RpcError as error:
        if error.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND):
            return None
        raise TargetError(f"ModelConfig: {said(error)}") from error
    return response.config


def said(error: grpc.RpcError) -> str:
    """What the target answered: its status code and its message, cut to ``MAX_SAID_CHARS``."""
    code = error.code() or grpc.StatusCode.UNKNOWN
    details = error.details() or ""
    if len(details) > MAX_SAID_CHARS:
        details = details[:MAX_SAID_CHARS] + "…"
    return f"{code.name}: {details}" if details else code.name
