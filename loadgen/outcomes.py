"""How a request ends: its outcome category, from its gRPC status, and its error message as one row's key.

UNAVAILABLE means two different things: the server refused the request (admission control: ``Exceeds maximum
queue size``, a queue timeout, shutting down, model not ready), or no server answered at all (nothing listens,
the connection was reset or closed under the call: a dead or restarting server). The second kind is told apart by
the transport's own texts, which grpcio puts in the status details (and its debug string) of a failure it made up
itself; the server's admission-control texts (``ipsbench.server.errors``, Triton's) match none of them."""

from __future__ import annotations

import enum
import re

import grpc

MAX_MESSAGE_CHARS = 200
_IDENTIFIER = re.compile(r"\b(?=[0-9a-fA-F-]*[0-9])[0-9a-fA-F]{8,}(?:-[0-9a-fA-F]{4,})*\b")
"""Request ids and UUIDs in error messages; replaced so that one kind of error stays one row."""
_TRANSPORT_FAILURE = re.compile(
    r"failed to connect|connection refused|connection reset|connect failed|socket closed|stream removed"
    r"|broken pipe|endpoint closed|transport closed|connection closed|connections to all backends failing"
    r"|endpoint read failed|transport destroyed|cancelling all calls|goaway|dns resolution failed"
    r"|name resolution|no route to host|network is unreachable|keepalive watchdog",
    re.IGNORECASE,
)
"""grpcio's (C core's) texts for a call that no server answered: nothing listening, a connection reset or closed
under the call (a GOAWAY too: the server is going away), the name not resolving."""
_FROM_PEER = "Error received from peer"
"""Older grpcio debug strings say so for a status the server sent."""


class Outcome(str, enum.Enum):
    """How a request ended. Every issued request ends in exactly one."""

    OK = "ok"
    REJECTED = "rejected"
    """UNAVAILABLE from the server: refused by admission control (queue full, queue timeout, shutting down)."""
    UNREACHABLE = "unreachable"
    """UNAVAILABLE from the transport: no connection to the target, or the connection failed under the call."""
    FAILED = "failed"
    """Any other non-OK status."""
    DEADLINE = "deadline"
    """DEADLINE_EXCEEDED: the RPC deadline passed."""
    CANCELLED = "cancelled"
    """CANCELLED."""
    ABANDONED = "abandoned"
    """Still in flight when the step or run stopped waiting for it."""


COMPLETED = (Outcome.OK, Outcome.REJECTED, Outcome.UNREACHABLE, Outcome.FAILED, Outcome.DEADLINE, Outcome.CANCELLED)
ERRORS = (Outcome.REJECTED, Outcome.UNREACHABLE, Outcome.FAILED, Outcome.DEADLINE, Outcome.CANCELLED)
IDENTITY = "issued = " + " + ".join(outcome.value for outcome in Outcome)
"""The accounting identity every step keeps, in words."""

_OUTCOME_BY_CODE = {
    grpc.StatusCode.UNAVAILABLE: Outcome.REJECTED,
    grpc.StatusCode.DEADLINE_EXCEEDED: Outcome.DEADLINE,
    grpc.StatusCode.CANCELLED: Outcome.CANCELLED,
}


def outcome_for(code: grpc.StatusCode, details: str = "", debug: str = "") -> Outcome:
    """The outcome category of a non-OK gRPC status code, with its details and (where grpcio gives one) its debug
    error string: UNAVAILABLE is UNREACHABLE when they are the transport's own words for a failed connection."""
    outcome = _OUTCOME_BY_CODE.get(code, Outcome.FAILED)
    if outcome is Outcome.REJECTED and _FROM_PEER not in debug and unreachable_text(f"{details}\n{debug}"):
        return Outcome.UNREACHABLE
    return outcome


def debug_text(error: grpc.RpcError) -> str:
    """grpcio's debug error string of a failed call, or empty where the error has none."""
    debug = getattr(error, "debug_error_string", None)
    try:
        return str(debug() or "") if callable(debug) else ""
    except Exception:  # noqa: BLE001 - a description only; never lose the request's outcome over it
        return ""


def unreachable_text(text: str) -> bool:
    """Whether ``text`` is grpcio's description of a call no server answered."""
    return _TRANSPORT_FAILURE.search(text or "") is not None


def error_message_kind(message: str) -> str:
    """An error message with request ids and UUIDs masked, cut to a bounded length."""
    return _IDENTIFIER.sub("<id>", message or "")[:MAX_MESSAGE_CHARS]
