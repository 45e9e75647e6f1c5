"""Converters between KServe v2 gRPC messages and the core's types, in pairs (from/to) so they round-trip."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np
from tritonclient.grpc import service_pb2

from ipsbench.server import datatypes
from ipsbench.server.classification import CLASSIFICATION_PARAMETER
from ipsbench.server.dataplane import (
    NO_OPTIONS,
    IndexEntry,
    InferOptions,
    InferRequest,
    InferResponse,
    InputTensor,
    OutputTensor,
)
from ipsbench.server.errors import invalid_argument, quoted, unimplemented
from ipsbench.server.model_spec import ModelSpec
from ipsbench.server.shared_memory import RegionStatus, RegionUse
from ipsbench.server.stats import Duration, ModelStats
from ipsbench.server.wire import encode_infer_response, raw_contents

# -- ModelInfer ----------------------------------------------------------------------------------------------------


def infer_request_from_grpc(
    message: service_pb2.ModelInferRequest,
    raw: Sequence[bytes | memoryview] | None = None,
    regions: RegionUse | None = None,
) -> InferRequest:
    """``raw``: the raw input contents when they were taken off the wire separately (:mod:`ipsbench.server.wire`);
    ``regions``: where inputs and outputs that name a shared-memory region find it (their data then comes from, and
    goes to, the region; the raw contents belong to the other inputs, in order)."""
    if raw is None:
        raw = message.raw_input_contents
    inputs = message.inputs
    shared = [_shared_memory(tensor) for tensor in inputs]
    if any(shared) and regions is None:
        raise unimplemented("shared memory inputs are not supported on this path")
    if raw:
        in_band = sum(1 for s in shared if s is None)
        if len(raw) != in_band:
            raise invalid_argument(
                f"the number of inputs ({in_band}) does not match the expected number of raw input contents "
                f"({len(raw)})"
            )
    contents = iter(raw)
    tensors = []
    for tensor, where in zip(inputs, shared):
        has_contents = tensor.HasField("contents")
        if where is not None:
            if has_contents:
                raise invalid_argument(
                    f"unexpected 'content' provided when using shared memory for input tensor "
                    f"'{quoted(tensor.name)}' for model '{quoted(message.model_name)}'"
                )
            tensors.append(InputTensor(tensor.name, tensor.datatype, tensor.shape, regions.input(*where), None))
        elif raw:
            if has_contents:
                raise invalid_argument("contents field must not be specified when using raw_input_contents")
            tensors.append(InputTensor(tensor.name, tensor.datatype, tensor.shape, next(contents), None))
        else:
            tensors.append(
                InputTensor(tensor.name, tensor.datatype, tensor.shape, None, tensor.contents if has_contents else None)
            )
    for output in message.outputs:
        where = _shared_memory(output)
        if where is not None:
            if regions is None:
                raise unimplemented("shared memory outputs are not supported on this path")
            if output.parameters and CLASSIFICATION_PARAMETER in output.parameters:
                raise invalid_argument("output can't set both 'shared_memory_region' and 'classification'")
            regions.output(output.name, *where)
    outputs = [output.name for output in message.outputs] if message.outputs else ()
    return InferRequest(message.model_name, message.model_version, message.id, tensors, outputs)


SHM_REGION_PARAMETER = "shared_memory_region"
SHM_OFFSET_PARAMETER = "shared_memory_offset"
SHM_BYTE_SIZE_PARAMETER = "shared_memory_byte_size"


def _shared_memory(tensor) -> tuple[str, int, int] | None:
    """A tensor's (region, offset, byte size) when its parameters name a region; Triton's texts
    (``ParseSharedMemoryParams``) for the parameters it refuses."""
    parameters = tensor.parameters
    if not parameters:
        return None
    name = quoted(tensor.name)

    def typed(key: str, kind: str):
        parameter = parameters[key]
        if parameter.WhichOneof("parameter_choice") != kind:
            raise invalid_argument(f"invalid value type for '{key}' parameter for tensor '{name}', expected {kind}.")
        return getattr(parameter, kind)

    has_region = SHM_REGION_PARAMETER in parameters
    for key in (SHM_OFFSET_PARAMETER, SHM_BYTE_SIZE_PARAMETER):
        if key in parameters and not has_region:
            raise invalid_argument(
                f"'{key}' can not be specified without '{SHM_REGION_PARAMETER}' parameter for tensor '{name}'"
            )
    if not has_region:
        return None
    region = typed(SHM_REGION_PARAMETER, "string_param")
    offset = typed(SHM_OFFSET_PARAMETER, "int64_param") if SHM_OFFSET_PARAMETER in parameters else 0
    if SHM_BYTE_SIZE_PARAMETER not in parameters:
        raise invalid_argument(
            f"'{SHM_BYTE_SIZE_PARAMETER}' must be specified along with '{SHM_REGION_PARAMETER}' parameter for "
            f"tensor '{name}'"
        )
    return region, offset, typed(SHM_BYTE_SIZE_PARAMETER, "int64_param")


def shared_memory_parameters(region: str, byte_size: int, offset: int = 0) -> dict[str, service_pb2.InferParameter]:
    """A tensor's parameters that point it at ``byte_size`` bytes at ``offset`` of ``region``."""
    parameters = {
        SHM_REGION_PARAMETER: service_pb2.InferParameter(string_param=region),
        SHM_BYTE_SIZE_PARAMETER: service_pb2.InferParameter(int64_param=byte_size),
    }
    if offset:
        parameters[SHM_OFFSET_PARAMETER] = service_pb2.InferParameter(int64_param=offset)
    return parameters


TIMEOUT_PARAMETER = "timeout"


def infer_options_from_grpc(message: service_pb2.ModelInferRequest) -> InferOptions:
    """The request's ``timeout`` parameter and its outputs' ``classification`` parameters."""
    classification = None
    for output in message.outputs:
        if output.parameters and CLASSIFICATION_PARAMETER in output.parameters:
            what = f"output '{quoted(output.name)}' classification"
            count = _int_parameter(output.parameters[CLASSIFICATION_PARAMETER], what)
            if count:
                if classification is None:
                    classification = {}
                classification[output.name] = count
    timeout_us = 0
    if message.parameters and TIMEOUT_PARAMETER in message.parameters:
        timeout_us = _int_parameter(message.parameters[TIMEOUT_PARAMETER], "request timeout")
        if timeout_us < 0:
            raise invalid_argument(f"request timeout must be >= 0 microseconds, got {timeout_us}")
    if classification is None and not timeout_us:
        return NO_OPTIONS
    return InferOptions(classification, timeout_us)


def _int_parameter(parameter: service_pb2.InferParameter, what: str) -> int:
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise invalid_argument(f"{what} parameter must be an integer, got {kind or 'nothing'}")
    return getattr(parameter, kind)


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


def response_header(response: InferResponse) -> service_pb2.ModelInferResponse:
    """The response message without its raw output contents: the one place both encodings build it from."""
    return service_pb2.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=[
            service_pb2.ModelInferResponse.InferOutputTensor(name=o.name, datatype=o.datatype, shape=o.array.shape)
            for o in response.outputs
        ],
    )


_IN_REGION = np.empty(0, np.uint8)
"""What an output written into its shared-memory region sends in band: an empty entry, as Triton does."""


def infer_response_to_grpc(
    response: InferResponse, in_regions: Collection[str] = ()
) -> service_pb2.ModelInferResponse:
    """``in_regions``: outputs already written into their shared-memory regions (sent empty)."""
    message = response_header(response)
    message.raw_output_contents.extend(
        b"" if o.name in in_regions else bytes(raw_contents(o.datatype, o.array)) for o in response.outputs
    )
    return message


def _array(tensor: service_pb2.ModelInferResponse.InferOutputTensor, data: bytes) -> np.ndarray:
    shape = tuple(tensor.shape)
    if tensor.datatype == "BYTES":
        return datatypes.split_bytes_elements(data, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    return np.frombuffer(data, dtype=datatypes.BY_PROTOCOL[tensor.datatype].numpy).reshape(shape)


def infer_response_to_wire(response: InferResponse, in_regions: Collection[str] = ()) -> bytes:
    """The serialized ModelInferResponse, raw output contents written once (see :mod:`ipsbench.server.wire`);
    ``in_regions`` as for :func:`infer_response_to_grpc`."""
    return encode_infer_response(
        response_header(response),
        [("UINT8", _IN_REGION) if o.name in in_regions else (o.datatype, o.array) for o in response.outputs],
    )


def infer_response_from_grpc(message: service_pb2.ModelInferResponse) -> InferResponse:
    outputs = [
        OutputTensor(tensor.name, tensor.datatype, _array(tensor, data))
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


# -- shared memory -------------------------------------------------------------------------------------------------


def system_shared_memory_status_to_grpc(
    regions: Iterable[RegionStatus],
) -> service_pb2.SystemSharedMemoryStatusResponse:
    message = service_pb2.SystemSharedMemoryStatusResponse()
    for r in regions:
        message.regions[r.name].CopyFrom(
            service_pb2.SystemSharedMemoryStatusResponse.RegionStatus(
                name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size
            )
        )
    return message


def cuda_shared_memory_status_to_grpc(regions: Iterable[RegionStatus]) -> service_pb2.CudaSharedMemoryStatusResponse:
    message = service_pb2.CudaSharedMemoryStatusResponse()
    for r in regions:
        message.regions[r.name].CopyFrom(
            service_pb2.CudaSharedMemoryStatusResponse.RegionStatus(
                name=r.name, device_id=r.device_id, byte_size=r.byte_size
            )
        )
    return message
