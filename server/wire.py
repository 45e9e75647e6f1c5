"""Zero-copy wire format of the tensor payloads: ModelInferRequest in, ModelInferResponse out.

Python protobuf copies a ``bytes`` field twice (parsing, then again on each access), which for a 600 KB image tensor
costs more than everything else the server does per request. :func:`decode_infer_request` therefore walks the
top-level fields of the serialized request, keeps each ``raw_input_contents`` entry as a ``memoryview`` of the
received buffer, and lets protobuf parse only the rest (names, shapes, parameters). :func:`encode_infer_response`
serializes the response without its ``raw_output_contents`` and appends them as length-delimited fields, one copy
each. Anything the walker does not expect falls back to protobuf's own parser, so errors are protobuf's; a request
that does not parse is handed on with its ``error`` set, so that the RPC can answer INTERNAL with that text (a
deserializer that raises would make gRPC answer UNKNOWN); :func:`tolerant` does the same for every other RPC's
request message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from ipsbench.server import datatypes

_RAW_INPUT_FIELD = service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
_RAW_OUTPUT_FIELD = service_pb2.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number
_LENGTH_DELIMITED = 2
_RAW_OUTPUT_TAG = bytes([(_RAW_OUTPUT_FIELD << 3) | _LENGTH_DELIMITED])
_FIXED_SIZES = {1: 8, 5: 4}


class _Malformed(Exception):
    """The walker cannot read the buffer; protobuf's parser decides what it is."""


@dataclass(slots=True)
class InferRequestWire:
    """A ModelInferRequest split in two: ``message`` without ``raw_input_contents``, and those contents as views
    of the received buffer (no copy)."""

    message: service_pb2.ModelInferRequest
    raw: Sequence[bytes | memoryview]
    error: str = ""
    """Why the request could not be parsed (``message`` is then empty)."""
    size: int = 0
    """Bytes of the serialized request, as received."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def decode_infer_request(data: bytes) -> InferRequestWire:
    """The gRPC request deserializer of ModelInfer and ModelStreamInfer."""
    try:
        try:
            raw, rest = _split_raw(data)
        except _Malformed:
            message = service_pb2.ModelInferRequest.FromString(data)
            return InferRequestWire(message, list(message.raw_input_contents), size=len(data))
        return InferRequestWire(service_pb2.ModelInferRequest.FromString(rest), raw, size=len(data))
    except DecodeError as exc:
        return InferRequestWire(service_pb2.ModelInferRequest(), (), f"cannot parse the request: {exc}", len(data))


def _split_raw(data: bytes) -> tuple[list[memoryview], bytes]:
    view = memoryview(data)
    raw: list[memoryview] = []
    rest: list[memoryview] = []
    size = len(data)
    pos = kept_from = 0
    while pos < size:
        field_start = pos
        tag, pos = _varint(data, pos)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            end = pos + length
            if end > size:
                raise _Malformed
            if field == _RAW_INPUT_FIELD:
                rest.append(view[kept_from:field_start])
                raw.append(view[pos:end])
                kept_from = end
            pos = end
        elif wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type in _FIXED_SIZES:
            pos += _FIXED_SIZES[wire_type]
        else:
            raise _Malformed
        if field == 0 or (field == _RAW_INPUT_FIELD and wire_type != _LENGTH_DELIMITED):
            raise _Malformed
    if pos != size:
        raise _Malformed
    if not raw:
        return raw, data
    rest.append(view[kept_from:])
    return raw, b"".join(rest)


def _length_prefix(length: int) -> bytes:
    out = bytearray()
    while length >= 0x80:
        out.append((length & 0x7F) | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out)


def raw_contents(datatype: str, array) -> bytes | memoryview:
    """A tensor's ``raw_*_contents``: its bytes (a view when contiguous), or for BYTES its elements
    length-prefixed, as Triton sends them."""
    if datatype == "BYTES":
        return datatypes.join_bytes_elements(array.ravel())
    if array.flags.c_contiguous:
        return memoryview(array).cast("B") if array.size else b""
    return array.tobytes()


def encode_infer_response(
    message: service_pb2.ModelInferResponse, outputs: Sequence[tuple[str, object]]
) -> bytes:
    """``message`` (without raw contents) serialized, then one ``raw_output_contents`` entry per output:
    ``(datatype, numpy array)`` as :func:`raw_contents` gives it."""
    return join_infer_response(message.SerializeToString(), [raw_contents(d, a) for d, a in outputs])


def join_infer_response(header: bytes, payloads: Sequence[bytes | memoryview]) -> bytes:
    """A serialized ModelInferResponse from its header (serialized without raw contents) and the raw output
    contents, each copied once."""
    parts: list[bytes | memoryview] = [header]
    for payload in payloads:
        parts.append(_RAW_OUTPUT_TAG)
        parts.append(_length_prefix(len(payload)))
        parts.append(payload)
    return b"".join(parts)


class Unparseable(NamedTuple):
    """What a request deserializer hands the RPC for bytes that are no message of its type."""

    error: str


def tolerant(message_class):
    """A request deserializer that never raises: gRPC's own would log a traceback and answer UNKNOWN; the RPC
    answers INTERNAL (a request that cannot be parsed) in one log line instead, as ModelInfer does."""

    def deserialize(data: bytes):
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Unparseable(f"cannot parse the request: {exc}")

    return deserialize
