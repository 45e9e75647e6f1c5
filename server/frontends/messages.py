"""What front ends and the engine say to each other over their link (a Unix socket): small framed messages.

A frame is a 4-byte length and a msgpack array whose first item is its kind. Inference travels as Triton's own
messages: the request's ModelInferRequest serialized without its raw tensors, and the response's ModelInferResponse
header; the raw tensors lie in the request's slot of the front end's ring (:mod:`ipsbench.server.frontends.ring`)
and a frame only says where (``[offset, length]``), or, when no slot holds them, travel in the frame as bytes. Both
ends are processes of one ``ipsbench-serve``; the socket lives in a folder only its user can enter.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

import msgpack

_LENGTH = struct.Struct("<I")
MAX_FRAME_BYTES = 2**31
"""Larger than any gRPC message a front end accepts (2047 MiB), so inline tensors always fit."""

# Front end → engine: HELLO (once), INFER, CALL. Engine → front end: WELCOME (once), RESULT, FAILURE, READY (the
# server's readiness, whenever it changes), STOP (the engine is shutting down).
HELLO, INFER, CALL = "hello", "infer", "call"
WELCOME, RESULT, FAILURE, READY, STOP = "welcome", "result", "failure", "ready", "stop"

Payload = "bytes | memoryview | list[int]"
"""A raw tensor in a frame: its bytes, or ``[offset, length]`` in the request's slot."""


async def read_frame(reader: asyncio.StreamReader) -> list:
    """The next message; ``asyncio.IncompleteReadError`` at the end of the stream."""
    header = await reader.readexactly(_LENGTH.size)
    (length,) = _LENGTH.unpack(header)
    return msgpack.unpackb(await reader.readexactly(length), use_list=True, raw=False)


def frame(*message) -> bytes:
    payload = msgpack.packb(message, use_bin_type=True)
    if len(payload) >= MAX_FRAME_BYTES:
        raise ValueError(f"a link message of {len(payload)} bytes is too large")
    return _LENGTH.pack(len(payload)) + payload


def place(payloads: Sequence[bytes | memoryview], slot: memoryview | None, align: int) -> list:
    """Each payload copied into ``slot`` at aligned offsets (``[offset, length]``), while they fit; the rest stay
    as they are, to travel in the frame."""
    placed: list = []
    offset = 0
    for payload in payloads:
        length = len(payload)
        if slot is not None and offset + length <= len(slot):
            slot[offset:offset + length] = payload
            placed.append([offset, length])
            offset += (length + align - 1) // align * align
        else:
            placed.append(payload if isinstance(payload, bytes) else bytes(payload))
    return placed


def taken(placed: Sequence, slot: memoryview | None) -> list[bytes | memoryview]:
    """The payloads :func:`place` described, slot ones as views of ``slot``."""
    out: list[bytes | memoryview] = []
    for item in placed:
        if isinstance(item, list):
            if slot is None:
                raise ConnectionError("a frame names a slot its request does not have")
            offset, length = item
            if not 0 <= offset <= offset + length <= len(slot):
                raise ConnectionError("a frame names bytes outside its slot")
            out.append(slot[offset:offset + length])
        else:
            out.append(item)
    return out
