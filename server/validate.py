"""Check an inference request against its model before it is queued, with Triton's error texts.

Everything that can be computed once per model lives in :class:`~ipsbench.server.model_spec.ModelSpec`; this
module only compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ipsbench.server import datatypes
from ipsbench.server.dataplane import InferRequest, InputTensor, ModelInputs
from ipsbench.server.errors import invalid_argument, quoted
from ipsbench.server.model_spec import ModelSpec, TensorSpec, dims_text


def _names(names) -> str:
    return quoted("[" + ",".join(f"'{n}'" for n in names) + "]")


def _shape(shape) -> str:
    """A client's shape as a message repeats it: Triton's ``[1,3,224,224]``, cut to a bounded prefix."""
    return quoted(dims_text(shape))


def validate_request(spec: ModelSpec, request: InferRequest) -> ModelInputs:
    """Arrays ready for the batcher, or :class:`ServerError` INVALID_ARGUMENT naming the first problem."""
    model = spec.name
    # Each output is built once per name it is asked by: a name asked twice would be built (and copied) twice,
    # so a small request repeating one name could make the server allocate its output thousands of times.
    asked: set[str] = set()
    for output in request.outputs:
        if output not in spec.outputs:
            raise invalid_argument(f"unexpected inference output '{quoted(output)}' for model '{model}'")
        if output in asked:
            raise invalid_argument(f"output '{quoted(output)}' already requested for model '{model}'")
        asked.add(output)
    tensors: dict[str, InputTensor] = {}
    for tensor in request.inputs:
        if tensor.name not in spec.inputs:
            raise invalid_argument(f"unexpected inference input '{quoted(tensor.name)}' for model '{model}'")
        if tensor.name in tensors:
            raise invalid_argument(f"input '{quoted(tensor.name)}' already exists in request for model '{model}'")
        tensors[tensor.name] = tensor
    if len(tensors) < len(spec.required_inputs) or any(n not in tensors for n in spec.required_inputs):
        missing = [n for n in spec.required_inputs if n not in tensors]
        raise invalid_argument(
            f"expected {len(spec.inputs)} inputs but got {len(tensors)} inputs for model '{model}'. "
            f"Got input(s) {_names(tensors)}, but missing required input(s) {_names(missing)}. "
            "Please provide all required input(s)."
        )

    batch_size = 1
    if spec.batched:
        batch_size = 0
        for tensor in tensors.values():
            if len(tensor.shape) == 0:
                raise invalid_argument(
                    f"input '{tensor.name}' has no shape but model requires batch dimension for '{model}'"
                )
            if batch_size == 0:
                batch_size = tensor.shape[0]
            elif tensor.shape[0] != batch_size:
                raise invalid_argument(f"input '{tensor.name}' batch size does not match other inputs for '{model}'")
        if batch_size > spec.max_batch_size:
            raise invalid_argument(f"inference request batch-size must be <= {spec.max_batch_size} for '{model}'")
        if batch_size < 1:
            raise invalid_argument(f"inference request batch-size must be >= 1 for '{model}'")

    arrays: dict[str, np.ndarray] = {}
    for name, tensor in tensors.items():
        arrays[name] = _to_array(spec, spec.inputs[name], tensor, batch_size)
    key = None if spec.uniform_inputs else tuple(sorted((n, a.shape[1:]) for n, a in arrays.items()))
    return ModelInputs(arrays, batch_size, key)


def _to_array(spec: ModelSpec, expected: TensorSpec, tensor: InputTensor, batch_size: int) -> np.ndarray:
    model = spec.name
    datatype = expected.datatype
    if tensor.datatype != datatype.protocol:
        raise invalid_argument(
            f"inference input '{tensor.name}' data-type is '{quoted(tensor.datatype)}', "
            f"but model '{model}' expects '{datatype.protocol}'"
        )
    shape = tuple(int(d) for d in tensor.shape)
    dims = shape[1:] if spec.batched else shape
    if any(d < 0 for d in shape):
        raise invalid_argument(
            f"All input dimensions should be specified for input '{tensor.name}' for model '{model}', "
            f"got {_shape(shape)}"
        )
    if len(dims) != len(expected.dims) or any(c != -1 and c != d for c, d in zip(expected.dims, dims)):
        raise invalid_argument(
            f"unexpected shape for input '{tensor.name}' for model '{model}'. "
            f"Expected {expected.full_dims_text}, got {_shape(shape)}"
        )
    if datatype.is_bytes:
        return _bytes_array(tensor, model, shape)
    if expected.fixed:
        expected_bytes = expected.sample_nbytes * (batch_size if spec.batched else 1)
    else:
        expected_bytes = math.prod(shape) * datatype.numpy.itemsize
    if tensor.raw is not None:
        got = len(tensor.raw)
        if got != expected_bytes:
            raise _byte_size_mismatch(tensor.name, model, expected_bytes, got)
        return np.frombuffer(tensor.raw, dtype=datatype.numpy).reshape(shape)
    values = _typed_values(tensor, datatype)
    got = len(values) * datatype.numpy.itemsize
    if got != expected_bytes:
        raise _byte_size_mismatch(tensor.name, model, expected_bytes, got)
    return np.fromiter(values, dtype=datatype.numpy, count=len(values)).reshape(shape)


def _bytes_array(tensor: InputTensor, model: str, shape: tuple[int, ...]) -> np.ndarray:
    """A BYTES input as an object array of ``bytes`` of ``shape``, from length-prefixed raw data or typed contents."""
    count = math.prod(shape)
    where = f"for inference input '{tensor.name}' for model '{model}'"
    if tensor.raw is not None:
        try:
            elements = datatypes.split_bytes_elements(tensor.raw, count)
        except datatypes.BytesFormatError as exc:
            if exc.problem != datatypes.COUNT_PROBLEM:
                raise invalid_argument(f"{exc.problem} {where}, {exc.detail}") from None
            raise _element_count_mismatch(where, count, exc.elements_found) from None
        return elements.reshape(shape)
    values = _typed_values(tensor, datatypes.BYTES)
    if len(values) != count:
        raise _element_count_mismatch(where, count, len(values))
    return datatypes.object_array(list(values)).reshape(shape)


def _element_count_mismatch(where: str, expected: int, got: int):
    """Triton's texts: fewer elements than the shape says, or more."""
    if got < expected:
        return invalid_argument(f"expected {expected} string elements {where}, got {got}")
    return invalid_argument(f"unexpected number of string elements {got} {where}, expecting {expected}")


def _typed_values(tensor: InputTensor, datatype: datatypes.DataType) -> Sequence:
    if tensor.contents is None:
        return ()
    if datatype.contents_field is None:
        raise invalid_argument(f"input '{tensor.name}': {datatype.protocol} data must be sent in raw_input_contents")
    return getattr(tensor.contents, datatype.contents_field)


def _byte_size_mismatch(name: str, model: str, expected: int, got: int):
    return invalid_argument(
        f"input byte size mismatch for input '{name}' for model '{model}'. Expected {expected}, got {got}"
    )
