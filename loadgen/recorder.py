"""Per-step accounting of every issued request: outcome counts, errors, and HDR latency histograms.

Each request belongs to the step it was issued in and ends in exactly one outcome, so
``issued == ok + rejected + failed + deadline + cancelled + abandoned`` can be checked per step.
Latencies (microseconds, from ``time.perf_counter_ns()``) go into one HDR histogram per outcome, only for
requests that completed inside the step's measured window. A step's state encodes to plain data and
merges with another worker's state for the same step (counts add, histograms add).
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from hdrh.histogram import HdrHistogram

LOWEST_LATENCY_US = 1
HIGHEST_LATENCY_US = 60_000_000
SIGNIFICANT_DIGITS = 3
MAX_ERROR_KINDS = 64
"""Distinct (outcome, code, message) rows kept per step; further kinds are counted under one overflow row."""
MAX_MESSAGE_CHARS = 200
OVERFLOW_MESSAGE = "(further distinct error messages)"
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


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_LATENCY_US, HIGHEST_LATENCY_US, SIGNIFICANT_DIGITS)


def add_histogram(into: HdrHistogram, other: HdrHistogram) -> None:
    """``into += other``. hdrhistogram's ``add`` takes an empty histogram's minimum as 0, so empty sides are
    handled here."""
    if other.get_total_count() == 0:
        return
    was_empty = into.get_total_count() == 0
    into.add(other)
    if was_empty:
        into.min_value = other.min_value


@dataclass
class ErrorKind:
    """Requests that failed with one status code and message; times are offsets from the step's start."""

    count: int = 0
    first_ns: int = 0
    last_ns: int = 0


@dataclass
class StepRecord:
    """Everything recorded for one scenario step."""

    index: int
    concurrency: int
    warmup_s: float
    window_s: float
    start_ns: int
    """When the step began issuing (``perf_counter_ns``); the measured window follows the warm-up."""
    issued: int = 0
    counts: dict[Outcome, int] = field(default_factory=lambda: {o: 0 for o in Outcome})
    window_counts: dict[Outcome, int] = field(default_factory=lambda: {o: 0 for o in COMPLETED})
    window_images_ok: int = 0
    latencies_clamped: int = 0
    """Latencies above the histogram's range, recorded as its highest value."""
    histograms: dict[Outcome, HdrHistogram] = field(default_factory=lambda: {o: new_histogram() for o in COMPLETED})
    errors: dict[tuple[str, str, str], ErrorKind] = field(default_factory=dict)
    window_end_ns: int = 0
    interrupted: bool = False
    window_start_ns: int = field(init=False)

    def __post_init__(self) -> None:
        self.window_start_ns = self.start_ns + round(self.warmup_s * 1e9)
        if not self.window_end_ns:
            self.window_end_ns = self.window_start_ns + round(self.window_s * 1e9)

    # --- hot path -------------------------------------------------------------------------------------------

    def issuing(self, now_ns: int) -> bool:
        """True while requests may be issued: from the step's start to the end of its window."""
        return now_ns < self.window_end_ns

    def record_issued(self) -> None:
        self.issued += 1

    def record_ok(self, sent_ns: int, done_ns: int, images: int) -> None:
        self.counts[Outcome.OK] += 1
        if self.window_start_ns <= done_ns < self.window_end_ns:
            self.window_counts[Outcome.OK] += 1
            self.window_images_ok += images
            self._record_latency(Outcome.OK, done_ns - sent_ns)

    def record_error(self, code: grpc.StatusCode, message: str, sent_ns: int, done_ns: int) -> None:
        outcome = outcome_for(code)
        self.counts[outcome] += 1
        if self.window_start_ns <= done_ns < self.window_end_ns:
            self.window_counts[outcome] += 1
            self._record_latency(outcome, done_ns - sent_ns)
        self._note_error(outcome, code.name, message, done_ns)

    def record_client_error(self, error: Exception, sent_ns: int, done_ns: int) -> None:
        """A request that failed in the client itself (not a gRPC status): counted FAILED."""
        self.counts[Outcome.FAILED] += 1
        if self.window_start_ns <= done_ns < self.window_end_ns:
            self.window_counts[Outcome.FAILED] += 1
            self._record_latency(Outcome.FAILED, done_ns - sent_ns)
        self._note_error(Outcome.FAILED, "CLIENT", f"{type(error).__name__}: {error}", done_ns)

    def record_abandoned(self) -> None:
        self.counts[Outcome.ABANDONED] += 1

    def _record_latency(self, outcome: Outcome, elapsed_ns: int) -> None:
        latency_us = (elapsed_ns + 500) // 1000
        if latency_us > HIGHEST_LATENCY_US:
            self.latencies_clamped += 1
            latency_us = HIGHEST_LATENCY_US
        self.histograms[outcome].record_value(max(latency_us, LOWEST_LATENCY_US))

    def _note_error(self, outcome: Outcome, code: str, message: str, at_ns: int) -> None:
        at_ns -= self.start_ns
        key = (outcome.value, code, error_message_kind(message))
        kind = self.errors.get(key)
        if kind is None:
            if len(self.errors) >= MAX_ERROR_KINDS:
                key = (outcome.value, code, OVERFLOW_MESSAGE)
                kind = self.errors.get(key)
            if kind is None:
                kind = self.errors[key] = ErrorKind(first_ns=at_ns)
        kind.count += 1
        kind.last_ns = at_ns

    # --- end of step ----------------------------------------------------------------------------------------

    def interrupt(self, now_ns: int) -> None:
        """Stop issuing now; the measured window ends here if it had not ended yet."""
        if now_ns < self.window_end_ns:
            self.window_end_ns = max(now_ns, self.window_start_ns)
            self.interrupted = True

    @property
    def measured_window_s(self) -> float:
        """Length of the window actually measured (shorter than planned after an interruption)."""
        return (self.window_end_ns - self.window_start_ns) / 1e9

    def identity_holds(self) -> bool:
        return self.issued == sum(self.counts.values())

    # --- encoding and merging (for distributed runs) --------------------------------------------------------

    def encode(self) -> dict:
        """Plain data (JSON- and msgpack-safe) for sending this step's state elsewhere."""
        return {
            "index": self.index,
            "concurrency": self.concurrency,
            "warmup_s": self.warmup_s,
            "window_s": self.window_s,
            "measured_window_s": self.measured_window_s,
            "interrupted": self.interrupted,
            "issued": self.issued,
            "counts": {o.value: n for o, n in self.counts.items()},
            "window_counts": {o.value: n for o, n in self.window_counts.items()},
            "window_images_ok": self.window_images_ok,
            "latencies_clamped": self.latencies_clamped,
            "histograms": {o.value: h.encode().decode("ascii") for o, h in self.histograms.items()},
            "errors": [[*key, kind.count, kind.first_ns, kind.last_ns] for key, kind in self.errors.items()],
        }

    @classmethod
    def decode(cls, data: dict, start_ns: int = 0) -> StepRecord:
        """Inverse of :meth:`encode`; the decoded step is placed at ``start_ns`` on the local clock."""
        window_start_ns = start_ns + round(data["warmup_s"] * 1e9)
        step = cls(
            index=data["index"],
            concurrency=data["concurrency"],
            warmup_s=data["warmup_s"],
            window_s=data["window_s"],
            start_ns=start_ns,
            window_end_ns=window_start_ns + round(data["measured_window_s"] * 1e9),
            interrupted=data["interrupted"],
        )
        step.merge_encoded(data)
        return step

    def merge_encoded(self, data: dict) -> None:
        """Add another recorder's encoded state for the same step."""
        if data["index"] != self.index:
            raise ValueError(f"cannot merge step {data['index']} into step {self.index}")
        self.issued += data["issued"]
        for name, n in data["counts"].items():
            self.counts[Outcome(name)] += n
        for name, n in data["window_counts"].items():
            self.window_counts[Outcome(name)] += n
        self.window_images_ok += data["window_images_ok"]
        self.latencies_clamped += data["latencies_clamped"]
        for name, encoded in data["histograms"].items():
            self.histograms[Outcome(name)].decode_and_add(encoded)
        for outcome, code, message, count, first_ns, last_ns in data["errors"]:
            kind = self.errors.setdefault((outcome, code, message), ErrorKind(first_ns=first_ns, last_ns=last_ns))
            kind.count += count
            kind.first_ns = min(kind.first_ns, first_ns)
            kind.last_ns = max(kind.last_ns, last_ns)
        self.interrupted = self.interrupted or data["interrupted"]


class RunRecorder:
    """The steps of one run, in order; ``current`` is the step new requests are issued into."""

    def __init__(self, clock_ns: Callable[[], int] = time.perf_counter_ns) -> None:
        self._clock_ns = clock_ns
        self.started_ns = self._clock_ns()
        self.steps: list[StepRecord] = []
        self.current: StepRecord | None = None

    def now_ns(self) -> int:
        return self._clock_ns()

    def open_step(self, concurrency: int, warmup_s: float, window_s: float) -> StepRecord:
        step = StepRecord(
            index=len(self.steps), concurrency=concurrency, warmup_s=warmup_s, window_s=window_s,
            start_ns=self._clock_ns(),
        )
        self.steps.append(step)
        self.current = step
        return step

    def close_step(self) -> None:
        """No further requests are issued into the current step (its stragglers still record into it)."""
        self.current = None

    def interrupt(self) -> None:
        """Stop issuing: the current step's window ends now."""
        if self.current is not None:
            self.current.interrupt(self._clock_ns())
        self.current = None
