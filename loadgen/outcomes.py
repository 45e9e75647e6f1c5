"""How a request ends: its outcome category, from its gRPC status, and its error message as one row's key."""

from __future__ import annotations

import enum
import re

import grpc

MAX_MESSAGE_CHARS = 200
_IDENTIFIER = re.compile(r"\b(?=[0-9a-fA-F-]*[0-9])[0-9a-fA-F]{8,}(?:-[0-9a-fA-F]{4,})*\b")
"""Request ids and UUIDs in error messages; replaced so that one kind of error stays one row."""


class Outcome(str, enum.Enum):
    """How a request ended. Every issued request ends in exactly one."""

    OK = "ok"
    REJECTED = "rejected"
    """UNAVAILABLE: refused by admission control (queue full, shutting down) or no connection."""
    FAILED = "failed"
    """Any other non-OK status."""
    DEADLINE = "deadline"
    """DEADLINE_EXCEEDED: the RPC deadline passed."""
    CANCELLED = "cancelled"
    """CANCELLED."""
    ABANDONED = "abandoned"
    """Still in flight when the step or run stopped waiting for it."""


COMPLETED = (Outcome.OK, Outcome.REJECTED, Outcome.FAILED, Outcome.DEADLINE, Outcome.CANCELLED)
ERRORS = (Outcome.REJECTED, Outcome.FAILED, Outcome.DEADLINE, Outcome.CANCELLED)

_OUTCOME_BY_CODE = {
    grpc.StatusCode.UNAVAILABLE: Outcome.REJECTED,
    grpc.StatusCode.DEADLINE_EXCEEDED: Outcome.DEADLINE,
    grpc.StatusCode.CANCELLED: Outcome.CANCELLED,
}


def outcome_for(code: grpc.StatusCode) -> Outcome:
    """The outcome category of a non-OK gRPC status code."""
    return _OUTCOME_BY_CODE.get(code, Outcome.FAILED)


def error_message_kind(message: str) -> str:
    """An error message with request ids and UUIDs masked, cut to a bounded length."""
    return _IDENTIFIER.sub("<id>", message or "")[:MAX_MESSAGE_CHARS]
