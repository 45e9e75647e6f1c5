"""``--shared-memory system``: the load generator's own shared-memory regions, from creation to removal.

Before the run, :func:`open_regions` creates two POSIX shared-memory objects with tritonclient's shm utilities (one
holding every distinct request's input, written once; one with an output slot per distinct request), registers them
with the target (Triton's SystemSharedMemoryRegister) and rewrites each request to name its input's bytes and its
outputs' slots instead of carrying them in the message. Requests built from the same payload share its output slot:
the same input gives the same output, so concurrent writes of it are the same bytes. :meth:`RunRegions.close`
unregisters and removes them; the run calls it at its end whatever the end (a signal, a failed run), and creation
undoes itself when a step of it fails. Only a target on this host can read this host's shared memory:
:func:`ipsbench.loadgen.client.is_local_target` is checked before anything runs.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field

import grpc
import numpy as np
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ipsbench.loadgen.client import said
from ipsbench.server import datatypes

logger = logging.getLogger(__name__)

SHM_REGION, SHM_OFFSET, SHM_BYTE_SIZE = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"
"""Triton's tensor parameters that point a tensor at a registered region."""
REGISTER_DEADLINE_S = 10.0
ALIGN = 64
"""Each slot starts on a 64-byte boundary (a cache line)."""


class SharedMemoryError(RuntimeError):
    """The regions cannot be set up: the target refuses them, or the model's outputs have no fixed size."""


def output_bytes(metadata: service_pb2.ModelMetadataResponse, images_per_request: int, batched: bool) -> list[int]:
    """Bytes of each output of one request, from the model's metadata; SharedMemoryError for one of no fixed size."""
    sizes = []
    for tensor in metadata.outputs:
        dims = [int(d) for d in tensor.shape]
        if batched and dims and dims[0] == -1:
            dims[0] = images_per_request
        datatype = datatypes.BY_PROTOCOL.get(tensor.datatype)
        if datatype is None or datatype.is_bytes or any(d < 0 for d in dims):
            raise SharedMemoryError(
                f"--shared-memory needs outputs of a fixed size: output {tensor.name!r} is {tensor.datatype} "
                f"{[int(d) for d in tensor.shape]}"
            )
        sizes.append(int(np.prod(dims, dtype=np.int64)) * datatype.numpy.itemsize)
    return sizes


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


@dataclass
class RunRegions:
    """This run's regions on the target: their handles, and the requests rewritten to use them."""

    channel: grpc.Channel
    """Its own channel to the target, closed by :meth:`close`."""
    metadata: tuple[tuple[str, str], ...] | None
    handles: dict[str, object] = field(default_factory=dict)
    """Region name → tritonclient handle, of regions created here."""
    registered: list[str] = field(default_factory=list)
    requests: tuple[bytes, ...] = ()
    region_count: int = 0
    bytes_total: int = 0
    """What was registered, for the report (kept once the regions are gone)."""

    @property
    def stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        return service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def describe(self) -> dict:
        return {"kind": "system", "regions": self.region_count, "bytes": self.bytes_total}

    def close(self) -> None:
        """Unregister every region registered, then remove every object created; each step is tried even when an
        earlier one fails (a target gone, for example), and nothing here raises."""
        for name in self.registered:
            try:
                self.stub.SystemSharedMemoryUnregister(
                    service_pb2.SystemSharedMemoryUnregisterRequest(name=name),
                    timeout=REGISTER_DEADLINE_S, metadata=self.metadata,
                )
            except grpc.RpcError as error:
                logger.warning("could not unregister shared memory region %s from the target: %s", name, said(error))
        self.registered.clear()
        for name, handle in self.handles.items():
            try:
                shm.destroy_shared_memory_region(handle)
            except Exception as error:  # noqa: BLE001 - removal is best effort, said once per region
                logger.warning("could not remove shared memory region %s: %s", name, error)
        self.handles.clear()
        self.channel.close()


def open_regions(
    channel: grpc.Channel, requests: tuple[bytes, ...], outputs: list[tuple[str, int]],
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> RunRegions:
    """Create, fill and register this run's regions for ``requests`` (in-band requests of one input each) over
    ``channel`` (the regions own it from now on); ``outputs``: (name, bytes per request) of each output. On any
    failure what was done is undone, then SharedMemoryError."""
    regions = RunRegions(channel, metadata)
    try:
        _open(regions, requests, outputs)
    except BaseException:
        regions.close()
        raise
    return regions


def _open(regions: RunRegions, requests: tuple[bytes, ...], outputs: list[tuple[str, int]]) -> None:
    parsed = [service_pb2.ModelInferRequest.FromString(request) for request in requests]
    inputs = [bytes(message.raw_input_contents[0]) for message in parsed]
    input_offsets = np.cumsum([0] + [_aligned(len(data)) for data in inputs]).tolist()
    slot = sum(_aligned(size) for _, size in outputs)
    token = f"ipsbench-load-{os.getpid()}-{secrets.token_hex(4)}"
    input_name, output_name = f"{token}-inputs", f"{token}-outputs"
    sizes = {input_name: max(input_offsets[-1], 1), output_name: max(slot * len(parsed), 1)}
    for name, size in sizes.items():
        try:
            regions.handles[name] = shm.create_shared_memory_region(name, f"/{name}", size)
        except shm.SharedMemoryException as error:
            raise SharedMemoryError(f"cannot create shared memory region {name} of {size} bytes: {error}") from None
        regions.bytes_total += size
    buffer = regions.handles[input_name]
    for data, offset in zip(inputs, input_offsets):  # each distinct payload written once
        shm.set_shared_memory_region(buffer, [np.frombuffer(data, np.uint8)], offset=offset)
    for name, size in sizes.items():
        try:
            regions.stub.SystemSharedMemoryRegister(
                service_pb2.SystemSharedMemoryRegisterRequest(name=name, key=f"/{name}", offset=0, byte_size=size),
                timeout=REGISTER_DEADLINE_S, metadata=regions.metadata,
            )
        except grpc.RpcError as error:
            raise SharedMemoryError(f"the target refused shared memory region {name}: {said(error)}") from None
        regions.registered.append(name)
        regions.region_count += 1
    rewritten = []
    for number, (message, data) in enumerate(zip(parsed, inputs)):
        del message.raw_input_contents[:]
        _point(message.inputs[0].parameters, input_name, input_offsets[number], len(data))
        del message.outputs[:]
        offset = number * slot
        for output, size in outputs:
            _point(message.outputs.add(name=output).parameters, output_name, offset, size)
            offset += _aligned(size)
        rewritten.append(message.SerializeToString())
    regions.requests = tuple(rewritten)
    logger.info("sending over system shared memory: regions %s and %s, %d bytes", input_name, output_name,
                regions.bytes_total)


def _point(parameters, region: str, offset: int, byte_size: int) -> None:
    parameters[SHM_REGION].string_param = region
    parameters[SHM_BYTE_SIZE].int64_param = byte_size
    if offset:
        parameters[SHM_OFFSET].int64_param = offset


def without_outputs(request: bytes) -> bytes:
    """``request`` asking for no output in particular (all of them, in the message)."""
    message = service_pb2.ModelInferRequest.FromString(request)
    if not message.outputs:
        return request
    del message.outputs[:]
    return message.SerializeToString()
