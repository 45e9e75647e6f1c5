"""Per-step accounting of every issued request: outcome counts, errors, and HDR latency histograms.

Each request belongs to the step it was issued in and ends in exactly one outcome, so
``issued == ok + rejected + failed + deadline + cancelled + abandoned`` can be checked per step.
Latencies (microseconds, from ``time.perf_counter_ns()``) go into one HDR histogram per outcome. Closed loop:
requests that completed inside the step's measured window, timed from their send. Open loop: requests whose
*intended* send time fell inside the window, timed from that intended time (no coordinated omission), with the
service time (from the actual send) and each send's lateness in histograms of their own. A step's state
encodes to plain data and merges with another worker's state for the same step (counts add, histograms add).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from hdrh.histogram import HdrHistogram

from loadgen.histograms import (
    HIGHEST_LATENCY_US,
    LOWEST_LATENCY_US,
    add_encoded,
    encode_histogram,
    new_histogram,
)
from loadgen.outcomes import COMPLETED, Outcome, error_message_kind, outcome_for

MAX_ERROR_KINDS = 64
"""Distinct (outcome, code, message) rows kept per step; further kinds are counted under one overflow row."""
OVERFLOW_MESSAGE = "(further distinct error messages)"
LATE_TOLERANCE_US = 2_000
"""An open-loop send more than this after its intended time counts as late."""
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
    """Users in the step: closed-loop concurrency, or the open-loop senders the rate is split among."""
    warmup_s: float
    window_s: float
    start_ns: int
    """When the step began issuing (``perf_counter_ns``); the measured window follows the warm-up."""
    rate_per_s: float | None = None
    """Open-loop target arrival rate; None for a closed-loop step."""
    issued: int = 0
    counts: dict[Outcome, int] = field(default_factory=lambda: {o: 0 for o in Outcome})
    window_counts: dict[Outcome, int] = field(default_factory=lambda: {o: 0 for o in COMPLETED})
    window_images_ok: int = 0
    latencies_clamped: int = 0
    """Latencies above the histogram's range, recorded as its highest value."""
    histograms: dict[Outcome, HdrHistogram] = field(default_factory=lambda: {o: new_histogram() for o in COMPLETED})
    errors: dict[tuple[str, str, str], ErrorKind] = field(default_factory=dict)
    scheduled: int = 0
    """Open loop: arrivals whose intended send time fell inside the measured window."""
    window_sends: int = 0
    """Open loop: requests actually sent inside the measured window."""
    late_sends: int = 0
    """Open loop: of those, sent more than ``LATE_TOLERANCE_US`` after their intended time."""
    not_sent: int = 0
    """Open loop: of the scheduled arrivals, those never sent because issuing ended first (the in-flight cap
    held them back)."""
    service_histogram: HdrHistogram = field(default_factory=new_histogram)
    lateness_histogram: HdrHistogram = field(default_factory=new_histogram)
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

    def record_ok(self, sent_ns: int, done_ns: int, images: int, intended_ns: int | None = None) -> None:
        if self._completed(Outcome.OK, sent_ns, done_ns, intended_ns):
            self.window_images_ok += images

    def record_error(
        self, code: grpc.StatusCode, message: str, sent_ns: int, done_ns: int, intended_ns: int | None = None
    ) -> None:
        outcome = outcome_for(code)
        self._completed(outcome, sent_ns, done_ns, intended_ns)
        self._note_error(outcome, code.name, message, done_ns)

    def record_client_error(
        self, error: Exception, sent_ns: int, done_ns: int, intended_ns: int | None = None
    ) -> None:
        """A request that failed in the client itself (not a gRPC status): counted FAILED."""
        self._completed(Outcome.FAILED, sent_ns, done_ns, intended_ns)
        self._note_error(Outcome.FAILED, "CLIENT", f"{type(error).__name__}: {error}", done_ns)

    def record_scheduled(self, intended_ns: int) -> None:
        """Open loop: the arrival process asked for a send at ``intended_ns``."""
        if self.in_window(intended_ns):
            self.scheduled += 1

    def record_send(self, intended_ns: int, sent_ns: int) -> None:
        """Open loop: a request due at ``intended_ns`` went out at ``sent_ns``."""
        if self.in_window(sent_ns):
            self.window_sends += 1
            lateness_us = max(0, (sent_ns - intended_ns) // 1000)
            self.late_sends += lateness_us > LATE_TOLERANCE_US
            self.lateness_histogram.record_value(min(lateness_us, HIGHEST_LATENCY_US))

    def record_not_sent(self, intended_ns: int) -> None:
        """Open loop: the arrival due at ``intended_ns`` was never sent (issuing ended first)."""
        if self.in_window(intended_ns):
            self.not_sent += 1

    def record_abandoned(self) -> None:
        self.counts[Outcome.ABANDONED] += 1

    def in_window(self, at_ns: int) -> bool:
        return self.window_start_ns <= at_ns < self.window_end_ns

    def _completed(self, outcome: Outcome, sent_ns: int, done_ns: int, intended_ns: int | None) -> bool:
        """Count one outcome and time it; True when it completed inside the measured window."""
        self.counts[outcome] += 1
        completed_in_window = self.in_window(done_ns)
        if completed_in_window:
            self.window_counts[outcome] += 1
        if intended_ns is None:
            if completed_in_window:
                self._record_latency(self.histograms[outcome], done_ns - sent_ns)
        elif self.in_window(intended_ns):
            self._record_latency(self.histograms[outcome], done_ns - intended_ns)
            if outcome is Outcome.OK:
                self._record_latency(self.service_histogram, done_ns - sent_ns)
        return completed_in_window

    def _record_latency(self, histogram: HdrHistogram, elapsed_ns: int) -> None:
        latency_us = (elapsed_ns + 500) // 1000
        if latency_us > HIGHEST_LATENCY_US:
            self.latencies_clamped += 1
            latency_us = HIGHEST_LATENCY_US
        histogram.record_value(max(latency_us, LOWEST_LATENCY_US))

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
            "rate_per_s": self.rate_per_s,
            "warmup_s": self.warmup_s,
            "window_s": self.window_s,
            "measured_window_s": self.measured_window_s,
            "interrupted": self.interrupted,
            "issued": self.issued,
            "counts": {o.value: n for o, n in self.counts.items()},
            "window_counts": {o.value: n for o, n in self.window_counts.items()},
            "window_images_ok": self.window_images_ok,
            "latencies_clamped": self.latencies_clamped,
            "histograms": {o.value: encode_histogram(h) for o, h in self.histograms.items()},
            "errors": [[*key, kind.count, kind.first_ns, kind.last_ns] for key, kind in self.errors.items()],
            "open_loop": [self.scheduled, self.window_sends, self.late_sends, self.not_sent],
            "service_histogram": encode_histogram(self.service_histogram),
            "lateness_histogram": encode_histogram(self.lateness_histogram),
        }

    @classmethod
    def decode(cls, data: dict, start_ns: int = 0) -> StepRecord:
        """Inverse of :meth:`encode`; the decoded step is placed at ``start_ns`` on the local clock."""
        window_start_ns = start_ns + round(data["warmup_s"] * 1e9)
        step = cls(
            index=data["index"],
            concurrency=data["concurrency"],
            rate_per_s=data["rate_per_s"],
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
            add_encoded(self.histograms[Outcome(name)], encoded)
        add_encoded(self.service_histogram, data["service_histogram"])
        add_encoded(self.lateness_histogram, data["lateness_histogram"])
        scheduled, window_sends, late_sends, not_sent = data["open_loop"]
        self.scheduled += scheduled
        self.window_sends += window_sends
        self.late_sends += late_sends
        self.not_sent += not_sent
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
        # Wall-clock anchor, only to line steps up with other timelines (GPU samples, server logs); durations
        # always come from the monotonic clock.
        self.started_unix_s = time.time()
        self.steps: list[StepRecord] = []
        self.current: StepRecord | None = None

    def now_ns(self) -> int:
        return self._clock_ns()

    def unix_s(self, clock_ns: int) -> float:
        """Wall-clock time of a reading of this recorder's monotonic clock."""
        return self.started_unix_s + (clock_ns - self.started_ns) / 1e9

    def open_step(
        self, concurrency: int, warmup_s: float, window_s: float, rate_per_s: float | None = None,
        index: int | None = None,
    ) -> StepRecord:
        """Start a step now; ``index`` defaults to the next one (a worker passes the master's)."""
        step = StepRecord(
            index=len(self.steps) if index is None else index, concurrency=concurrency, warmup_s=warmup_s,
            window_s=window_s, start_ns=self._clock_ns(), rate_per_s=rate_per_s,
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
