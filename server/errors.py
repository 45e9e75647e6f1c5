"""Errors that carry their gRPC status code, and the texts a client sees; the gRPC layer maps them in one place.

Where Triton has a text for a condition, the constant here is Triton's, so that clients matching on it keep working.
"""

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
    "quoted",
    "FailureReason",
    "LOADING_MESSAGE",
    "QUEUE_FULL_MESSAGE",
    "QUEUE_TIMEOUT_MESSAGE",
    "SHUTTING_DOWN_MESSAGE",
]


QUEUE_FULL_MESSAGE = "Exceeds maximum queue size"
QUEUE_TIMEOUT_MESSAGE = "Request timeout expired"
SHUTTING_DOWN_MESSAGE = "Server is shutting down"
LOADING_MESSAGE = "Server is not ready: models are still loading"


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


QUOTE_LIMIT = 128
"""Characters of a client-given text an error message repeats at most."""


def quoted(text: str, limit: int = QUOTE_LIMIT) -> str:
    """A client-given text as an error message may repeat it: printable (escaped otherwise) and at most ``limit``
    characters, with ``...`` when it was cut."""
    shown = text[:limit]
    shown = shown if shown.isprintable() else repr(shown)[1:-1]
    return shown + ("..." if len(text) > limit else "")


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
