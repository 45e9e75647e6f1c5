"""Converters between KServe v2 gRPC messages and the core's types, in pairs (from/to) so they round-trip."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from tritonclient.grpc import service_pb2

from server import datatypes
from server.core import IndexEntry, InferResponse, OutputTensor
from server.errors import invalid_argument
from server.model import ModelSpec
from server.stats import Duration, ModelStats
from server.validate import InferRequest, InputTensor

# -- ModelInfer ----------------------------------------------------------------------------------------------------


def infer_request_from_grpc(message: service_pb2.ModelInferRequest) -> InferRequest:
    raw = message.raw_input_contents
    inputs = message.inputs
    if raw:
        if len(raw) != len(inputs):
            raise invalid_argument(
                f"the number of inputs ({len(inputs)}) does not match the expected number of raw input contents "
                f"({len(raw)})"
            )
        tensors = []
        for tensor, data in zip(inputs, raw):
            if tensor.HasField("contents"):
                raise invalid_argument("contents field must not be specified when using raw_input_contents")
            tensors.append(InputTensor(tensor.name, tensor.datatype, tensor.shape, data, None))
    else:
        tensors = [
            InputTensor(t.name, t.datatype, t.shape, None, t.contents if t.HasField("contents") else None)
            for t in inputs
        ]
    outputs = [output.name for output in message.outputs] if message.outputs else ()
    return InferRequest(message.model_name, message.model_version, message.id, tensors, outputs)


def infer_request_to_grpc(request: InferRequest) -> service_pb2.ModelInferRequest:
    """Inputs as ``raw_input_contents`` (raw bytes, or typed values packed little-endian)."""
    message = service_pb2.ModelInferRequest(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    for tensor in request.inputs:
        message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        if tensor.raw is not None:
            message.raw_input_contents.append(bytes(tensor.raw))
        else:
            datatype = datatypes.BY_PROTOCOL[tensor.datatype]
            values = getattr(tensor.contents, datatype.contents_field) if tensor.contents is not None else ()
            message.raw_input_contents.append(np.asarray(values, dtype=datatype.numpy).tobytes())
    for name in request.outputs:
        message.outputs.add(name=name)
    return message


def infer_response_to_grpc(response: InferResponse) -> service_pb2.ModelInferResponse:
    outputs = response.outputs
    return service_pb2.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=[
            service_pb2.ModelInferResponse.InferOutputTensor(name=o.name, datatype=o.datatype, shape=o.array.shape)
            for o in outputs
        ],
        raw_output_contents=[o.array.tobytes() for o in outputs],
    )


def infer_response_from_grpc(message: service_pb2.ModelInferResponse) -> InferResponse:
    outputs = [
        OutputTensor(
            tensor.name,
            tensor.datatype,
            np.frombuffer(data, dtype=datatypes.BY_PROTOCOL[tensor.datatype].numpy).reshape(tuple(tensor.shape)),
        )
        for tensor, data in zip(message.outputs, message.raw_output_contents)
    ]
    return InferResponse(message.model_name, message.model_version, message.id, outputs)


# -- metadata, statistics, repository ------------------------------------------------------------------------------


def server_metadata_to_grpc(name: str, version: str, extensions: Sequence[str]) -> service_pb2.ServerMetadataResponse:
    return service_pb2.ServerMetadataResponse(name=name, version=version, extensions=list(extensions))


def model_metadata_to_grpc(spec: ModelSpec, versions: Sequence[str]) -> service_pb2.ModelMetadataResponse:
    def tensors(specs):
        return [
            service_pb2.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=t.datatype.protocol, shape=list(t.metadata_shape)
            )
            for t in specs.values()
        ]

    return service_pb2.ModelMetadataResponse(
        name=spec.name,
        versions=list(versions),
        platform=spec.platform,
        inputs=tensors(spec.inputs),
        outputs=tensors(spec.outputs),
    )


def _duration(duration: Duration) -> service_pb2.StatisticDuration:
    return service_pb2.StatisticDuration(count=duration.count, ns=duration.ns)


def model_statistics_to_grpc(stats: Iterable[ModelStats]) -> service_pb2.ModelStatisticsResponse:
    return service_pb2.ModelStatisticsResponse(model_stats=[_model_statistics(s) for s in stats])


def _model_statistics(stats: ModelStats) -> service_pb2.ModelStatistics:
    return service_pb2.ModelStatistics(
        name=stats.name,
        version=str(stats.version),
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=service_pb2.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.fail),
            queue=_duration(stats.queue),
            compute_input=_duration(stats.compute_input),
            compute_infer=_duration(stats.compute_infer),
            compute_output=_duration(stats.compute_output),
            cache_hit=service_pb2.StatisticDuration(),
            cache_miss=service_pb2.StatisticDuration(),
        ),
        batch_stats=[
            service_pb2.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(batch.compute_input),
                compute_infer=_duration(batch.compute_infer),
                compute_output=_duration(batch.compute_output),
            )
            for size, batch in sorted(stats.batches.items())
        ],
    )


def repository_index_to_grpc(entries: Iterable[IndexEntry]) -> service_pb2.RepositoryIndexResponse:
    return service_pb2.RepositoryIndexResponse(
        models=[
            service_pb2.RepositoryIndexResponse.ModelIndex(
                name=e.name, version=e.version, state=e.state, reason=e.reason
            )
            for e in entries
        ]
    )
