"""The inference path's own types, transport-free: what the gRPC layer hands the core, what the core hands the
batcher, and what comes back. Every layer of the path (convert, core, validate, preprocess, batcher) imports them
from here; none defines its own.

Request path: :class:`InferRequest` (as the transport delivered it) → :class:`ModelInputs` (validated arrays, after
preprocessing the engine's) → :class:`QueuedRequest` (in the batcher's queue) → :class:`RequestResult` (this
request's outputs of its batch) → :class:`InferResponse`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ipsbench.server.stats import Timing


@dataclass(slots=True)
class InputTensor:
    """One input as the transport delivered it: raw bytes or typed values, not yet checked."""

    name: str
    datatype: str
    shape: Sequence[int]
    raw: bytes | memoryview | None = None
    contents: object | None = None
    """``InferTensorContents``-like object: the typed field matching the datatype is read."""


@dataclass(slots=True)
class InferRequest:
    """An inference request as a client sent it."""

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: Sequence[InputTensor] = ()
    outputs: Sequence[str] = ()
    """Requested output names; empty means all."""


@dataclass(slots=True)
class InferOptions:
    """What a request asks for beyond its tensors (KServe v2 request and output parameters)."""

    classification: dict[str, int] | None = None
    """Output name → class count, for outputs returned as top-k classes (Triton's classification extension)."""
    timeout_us: int = 0
    """The request's queue timeout in microseconds (its ``timeout`` parameter); 0: the model's default."""


NO_OPTIONS = InferOptions()


@dataclass(slots=True)
class ModelInputs:
    """A request's inputs as numpy arrays, checked against its model."""

    arrays: dict[str, np.ndarray]
    batch_size: int
    """Samples in the request; 1 for models without a batch dimension."""
    batch_key: object
    """Requests batch together only when their keys are equal (same optional inputs and variable dims)."""


@dataclass(slots=True, eq=False)  # identity: a queue finds its own request, never compares arrays
class QueuedRequest:
    """One request waiting in a batcher's queue, or executing; its future resolves to a :class:`RequestResult`."""

    inputs: dict[str, np.ndarray]
    batch_size: int
    batch_key: object
    future: asyncio.Future
    timeout_ns: int = 0
    """The request's own queue timeout (0: none asked for); see :mod:`ipsbench.server.batching.batcher`."""
    enqueued_ns: int = 0
    deadline_ns: int = 0
    """When the request times out in the queue (``perf_counter_ns``); 0: never."""


@dataclass(slots=True)
class RequestResult:
    """One request's share of its batch's execution."""

    outputs: list[np.ndarray]
    """This request's outputs, in the model's output order."""
    timing: Timing = field(default_factory=Timing)


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index: a model version and its state (``READY`` or ``UNAVAILABLE``)."""

    name: str
    version: str
    state: str
    reason: str
