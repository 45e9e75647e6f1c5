"""Tensor data types: Triton config enums, KServe v2 protocol strings and numpy dtypes, mapped once.

Also the wire format of BYTES tensors (Triton's ``TYPE_STRING``): in ``raw_input_contents`` / ``raw_output_contents``
each element is a 4-byte little-endian length followed by that many bytes; in typed contents each element is one
entry of ``bytes_contents``. In numpy a BYTES tensor is an ``object`` array of ``bytes``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import model_config_pb2


@dataclass(frozen=True)
class DataType:
    """One tensor element type as each layer spells it."""

    config: int
    """``model_config_pb2.DataType`` value, e.g. ``TYPE_FP32``."""
    protocol: str
    """KServe v2 name, e.g. ``FP32``."""
    numpy: np.dtype
    contents_field: str | None
    """``InferTensorContents`` field that carries this type, if any."""

    @property
    def is_bytes(self) -> bool:
        """Variable-size elements: sizes come from the data, not from the shape."""
        return self.protocol == "BYTES"


def _dt(config_name: str, protocol: str, dtype, contents_field: str | None) -> DataType:
    return DataType(model_config_pb2.DataType.Value(config_name), protocol, np.dtype(dtype), contents_field)


_TYPES = (
    _dt("TYPE_BOOL", "BOOL", np.bool_, "bool_contents"),
    _dt("TYPE_UINT8", "UINT8", np.uint8, "uint_contents"),
    _dt("TYPE_UINT16", "UINT16", np.uint16, "uint_contents"),
    _dt("TYPE_UINT32", "UINT32", np.uint32, "uint_contents"),
    _dt("TYPE_UINT64", "UINT64", np.uint64, "uint64_contents"),
    _dt("TYPE_INT8", "INT8", np.int8, "int_contents"),
    _dt("TYPE_INT16", "INT16", np.int16, "int_contents"),
    _dt("TYPE_INT32", "INT32", np.int32, "int_contents"),
    _dt("TYPE_INT64", "INT64", np.int64, "int64_contents"),
    _dt("TYPE_FP16", "FP16", np.float16, None),
    _dt("TYPE_FP32", "FP32", np.float32, "fp32_contents"),
    _dt("TYPE_FP64", "FP64", np.float64, "fp64_contents"),
    _dt("TYPE_STRING", "BYTES", np.object_, "bytes_contents"),
)
BYTES = _TYPES[-1]

BY_CONFIG: dict[int, DataType] = {t.config: t for t in _TYPES}
BY_PROTOCOL: dict[str, DataType] = {t.protocol: t for t in _TYPES}


def config_type_name(config_type: int) -> str:
    """``TYPE_FP32`` for the enum value, for messages."""
    return model_config_pb2.DataType.Name(config_type)


_LENGTH = struct.Struct("<I")
LENGTH_PREFIX_BYTES = _LENGTH.size


class BytesFormatError(ValueError):
    """Raw BYTES data that does not split into length-prefixed elements.

    ``problem`` names what is wrong (``element count``, ``incomplete string length indicator``, ``incomplete string``,
    ``trailing bytes``) and ``detail`` the numbers, so that callers can phrase the message with the input's name.
    """

    def __init__(self, problem: str, detail: str, elements_found: int) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail
        self.elements_found = elements_found
        """Whole elements present (a lower bound when the data holds very many)."""


COUNT_PROBLEM = "element count"
_SCAN_LIMIT = 1 << 16
"""Elements counted at most when reporting how many a malformed buffer holds: the count is only for the message."""


def split_bytes_elements(data: bytes | memoryview, count: int) -> np.ndarray:
    """The ``count`` elements of raw BYTES data as a 1-D object array of ``bytes``.

    Reads only inside ``data``: a length prefix cut short, an element longer than what remains, fewer elements than
    ``count`` or bytes left over after ``count`` elements raise :class:`BytesFormatError`. Nothing is allocated for
    ``count`` up front: each element found consumes at least its 4-byte prefix, so a huge ``count`` with little
    data fails fast.
    """
    view = memoryview(data).cast("B")
    total = len(view)
    found: list[bytes] = []
    offset = 0
    for index in range(count):
        remaining = total - offset
        if remaining < LENGTH_PREFIX_BYTES:
            if remaining == 0:
                raise BytesFormatError(COUNT_PROBLEM, f"{index} elements found, {count} expected", index)
            raise BytesFormatError(
                "incomplete string length indicator",
                f"expecting {LENGTH_PREFIX_BYTES} bytes but only {remaining} bytes available",
                index,
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += LENGTH_PREFIX_BYTES
        remaining -= LENGTH_PREFIX_BYTES
        if length > remaining:
            raise BytesFormatError(
                "incomplete string",
                f"expecting string of length {length} but only {remaining} bytes available",
                index,
            )
        found.append(view[offset : offset + length].tobytes())
        offset += length
    if offset != total:
        extra, whole = _scan(view, offset)
        if whole:
            raise BytesFormatError(COUNT_PROBLEM, f"{count + extra} elements found, {count} expected", count + extra)
        raise BytesFormatError(
            "trailing bytes", f"{total - offset} bytes left after the {count} expected elements", count + extra
        )
    return object_array(found)


def object_array(elements: list) -> np.ndarray:
    """A 1-D object array holding exactly ``elements`` (numpy would turn a list of bytes into a fixed-width ``S``
    array first, dropping trailing NUL bytes)."""
    array = np.empty(len(elements), dtype=object)
    for index, element in enumerate(elements):
        array[index] = element
    return array


def _scan(view: memoryview, offset: int) -> tuple[int, bool]:
    """(whole elements from ``offset``, whether they end exactly at the end of ``view``), for error messages."""
    found = 0
    while len(view) - offset >= LENGTH_PREFIX_BYTES and found < _SCAN_LIMIT:
        (length,) = _LENGTH.unpack_from(view, offset)
        if offset + LENGTH_PREFIX_BYTES + length > len(view):
            return found, False
        offset += LENGTH_PREFIX_BYTES + length
        found += 1
    return found, offset == len(view)


def join_bytes_elements(elements: Iterable[bytes | str]) -> bytes:
    """Raw BYTES data from elements (``str`` is encoded as UTF-8), each with its 4-byte little-endian length."""
    parts: list[bytes] = []
    for element in elements:
        data = element.encode() if isinstance(element, str) else bytes(element)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)
