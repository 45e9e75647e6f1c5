"""Tensor data types: Triton config enums, KServe v2 protocol strings and numpy dtypes, mapped once."""

from __future__ import annotations

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
)

BY_CONFIG: dict[int, DataType] = {t.config: t for t in _TYPES}
BY_PROTOCOL: dict[str, DataType] = {t.protocol: t for t in _TYPES}
BY_NUMPY: dict[np.dtype, DataType] = {t.numpy: t for t in _TYPES}


def config_type_name(config_type: int) -> str:
    """``TYPE_FP32`` for the enum value, for messages."""
    return model_config_pb2.DataType.Name(config_type)
