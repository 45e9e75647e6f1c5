"""Errors that carry their gRPC status code; the gRPC layer maps them in one place."""

from __future__ import annotations

import re
import uuid

import grpc

__all__ = [
    "ServerError",
    "internal_error",
    "invalid_argument",
    "not_found",
    "unavailable",
    "unimplemented",
    "new_request_id",
    "FailureReason",
]


class FailureReason:
    """Triton's values for the ``reason`` label of ``nv_inference_request_failure``."""

    REJECTED = "REJECTED"
    CANCELED = "CANCELED"
    BACKEND = "BACKEND"
    OTHER = "OTHER"


class ServerError(Exception):
    """An error a client sees: a gRPC status code and a message safe to send.

    ``reason`` is the failure reason counted in metrics when the error belongs to a loaded model.
    """

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = FailureReason.OTHER) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason

    def __repr__(self) -> str:
        return f"ServerError({self.code.name}, {self.message!r})"


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\:]+[/\\]?)+")


def without_paths(message: str) -> str:
    """``message`` with absolute filesystem paths replaced by ``<path>``: texts from libraries (e.g. a model that
    does not load) may name server paths, which clients are not told (the log keeps the full text)."""
    return _ABSOLUTE_PATH.sub("<path>", message)


def new_request_id() -> str:
    """A short random id that ties a client-visible INTERNAL error to its log line."""
    return uuid.uuid4().hex[:16]


def invalid_argument(message: str) -> ServerError:
    return ServerError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServerError:
    return ServerError(grpc.StatusCode.NOT_FOUND, message)


def unavailable(message: str, reason: str = FailureReason.REJECTED) -> ServerError:
    return ServerError(grpc.StatusCode.UNAVAILABLE, message, reason)


def unimplemented(message: str) -> ServerError:
    return ServerError(grpc.StatusCode.UNIMPLEMENTED, message)


def internal_error(request_id: str, what: str = "inference failed") -> ServerError:
    """A fixed message plus the id under which the traceback was logged; never the traceback itself."""
    return ServerError(
        grpc.StatusCode.INTERNAL,
        f"{what}: internal server error (request id {request_id})",
        FailureReason.BACKEND,
    )
