"""Per-step accounting of every issued request: outcome counts, errors, and HDR latency histograms.

Each request belongs to the step it was issued in and ends in exactly one outcome, so
``issued == ok + rejected + unreachable + failed + deadline + cancelled + abandoned`` can be checked per step.
Latencies (microseconds, from ``time.perf_counter_ns()``) go into one HDR histogram per outcome. Closed loop:
requests that completed inside the step's measured window, timed from their send. Open loop: requests whose
*intended* send time fell inside the window, timed from that intended time (no coordinated omission), with the
service time (from the actual send) and each send's lateness in histograms of their own. A step's state
encodes to plain data and merges with another worker's state for the same step (:mod:`ipsbench.loadgen.step_encoding`).

A closed-loop step judged for stability splits its measured window into trials of ``window_s`` each (at most
``trials_max``); each trial keeps its own counts and histograms, and once the step is ended after trial k its
figures are those of the last 3 trials together (:meth:`StepRecord.settled`). Each step also notes the
process's own CPU time while it issued, to tell when the load generator itself was the bottleneck.

With a per-request log (:mod:`ipsbench.loadgen.request_log`) each request that ends is also written there, with the latency
exactly as it went into the histogram; without one, recording costs one ``if`` more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from hdrh.histogram import HdrHistogram

from ipsbench.loadgen.censoring import censored_bounds, new_offsets
from ipsbench.loadgen.histograms import (
    HIGHEST_LATENCY_US,
    LOWEST_LATENCY_US,
    add_histogram,
    new_histogram,
)
from ipsbench.loadgen.outcomes import COMPLETED, Outcome, error_message_kind, outcome_for
from ipsbench.loadgen.request_log import RequestLog
from ipsbench.loadgen.stability import window_figures
from ipsbench.loadgen.trials import STABLE_WINDOWS, Trial

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
    """Open loop: of the scheduled arrivals, those sent (on time or late, inside the window or just after it)."""
    late_sends: int = 0
    """Open loop: of those, sent more than ``LATE_TOLERANCE_US`` after their intended time."""
    not_sent: int = 0
    """Open loop: of the scheduled arrivals, those never sent: the in-flight cap was reached, or issuing ended
    first. Every scheduled arrival ends up sent or not sent."""
    capped: int = 0
    """Open loop: of those not sent, the ones that found the in-flight cap's worth of requests in flight."""
    censored_offsets: HdrHistogram = field(default_factory=new_offsets)
    """Open loop: the scheduled arrivals never sent or never answered, by their intended time's offset into the
    window (microseconds): their latency is censored at the window's end (:mod:`ipsbench.loadgen.censoring`)."""
    service_histogram: HdrHistogram = field(default_factory=new_histogram)
    lateness_histogram: HdrHistogram = field(default_factory=new_histogram)
    window_end_ns: int = 0
    interrupted: bool = False
    trials_max: int = 1
    """Closed loop: measured windows of ``window_s`` each at most (1: one window, not judged for stability)."""
    window_requests: int = 0
    """Closed loop, stability-judged: a trial ends after this many completed requests (perf_analyzer's count
    windows); 0: after ``window_s``."""
    trials: list[Trial] = field(default_factory=list)
    trials_used: int | None = None
    """Trials the step ran before it was ended (set when it was judged); None while running or if interrupted."""
    stable: bool | None = None
    phase: str | None = None
    cpu_seconds: float | None = None
    """This process's CPU time (all its threads) from the step's start until it stopped issuing."""
    accuracy: list[int] = field(default_factory=lambda: [0, 0, 0])
    """Accuracy under load: images checked, right at top-1, right within the top 5."""
    cpu_percent: list[float] = field(default_factory=list)
    """Per load-generating process: its CPU time over the time it issued into this step, in % of one core."""
    request_log: RequestLog | None = None
    """Where each request that ends is also written (``--request-log``); None: nowhere."""
    window_start_ns: int = field(init=False)
    _cpu_start_s: float = field(init=False, default=0.0)
    _counted: int = field(init=False, default=0)
    """Count windows: requests this process has completed into the trials so far."""

    def __post_init__(self) -> None:
        self.window_start_ns = self.start_ns + round(self.warmup_s * 1e9)
        if not self.window_end_ns:
            self.window_end_ns = self.window_start_ns + round(self.window_s * self.trials_max * 1e9)
        self._cpu_start_s = time.process_time()

    @property
    def open_loop(self) -> bool:
        """Requests went out at an arrival process's intended times (latency from those times)."""
        return self.rate_per_s is not None

    # --- hot path -------------------------------------------------------------------------------------------

    def issuing(self, now_ns: int) -> bool:
        """True while requests may be issued: from the step's start to the end of its window."""
        if now_ns < self.window_end_ns:
            return True
        if not self.cpu_percent:
            self._note_cpu(now_ns)
        return False

    def record_issued(self) -> None:
        self.issued += 1

    def record_ok(self, sent_ns: int, done_ns: int, images: int, intended_ns: int | None = None) -> None:
        if self._completed(Outcome.OK, sent_ns, done_ns, intended_ns, images):
            self.window_images_ok += images

    def record_error(
        self, code: grpc.StatusCode, message: str, sent_ns: int, done_ns: int, intended_ns: int | None = None,
        debug: str = "",
    ) -> None:
        """A request that ended with a non-OK status (``debug``: grpcio's debug error string, where it has one)."""
        outcome = outcome_for(code, message, debug)
        self._completed(outcome, sent_ns, done_ns, intended_ns, code=code.name)
        self._note_error(outcome, code.name, message, done_ns)

    def record_client_error(
        self, error: Exception, sent_ns: int, done_ns: int, intended_ns: int | None = None
    ) -> None:
        """A request that failed in the client itself (not a gRPC status): counted FAILED."""
        self._completed(Outcome.FAILED, sent_ns, done_ns, intended_ns, code="CLIENT")
        self._note_error(Outcome.FAILED, "CLIENT", f"{type(error).__name__}: {error}", done_ns)

    def record_scheduled(self, intended_ns: int) -> None:
        """Open loop: the arrival process asked for a send at ``intended_ns``."""
        if self.in_window(intended_ns):
            self.scheduled += 1

    def record_send(self, intended_ns: int, sent_ns: int) -> None:
        """Open loop: a request due at ``intended_ns`` went out at ``sent_ns`` (counted when it was due in the
        window, as its scheduling was)."""
        if self.in_window(intended_ns):
            self.window_sends += 1
            lateness_us = max(0, (sent_ns - intended_ns) // 1000)
            self.late_sends += lateness_us > LATE_TOLERANCE_US
            self.lateness_histogram.record_value(min(lateness_us, HIGHEST_LATENCY_US))

    def record_not_sent(self, intended_ns: int, capped: bool = False) -> None:
        """Open loop: the arrival due at ``intended_ns`` was never sent: ``capped``, the in-flight cap was
        reached; else issuing ended first."""
        if self.in_window(intended_ns):
            self.not_sent += 1
            self.capped += capped
            self._censor(intended_ns)

    def record_top_classes(self, labels, top_classes) -> None:
        """A checked response: each image's top classes against its label."""
        for label, top in zip(labels, top_classes):
            self.accuracy[0] += 1
            self.accuracy[1] += bool(top) and top[0] == label
            self.accuracy[2] += label in top

    def record_abandoned(self, sent_ns: int | None = None, intended_ns: int | None = None) -> None:
        """A request still in flight when its step or the run stopped waiting for it (its send time and, open
        loop, its intended time, where the caller knows them: only the request log shows them)."""
        self.counts[Outcome.ABANDONED] += 1
        if intended_ns is not None and self.in_window(intended_ns):
            self._censor(intended_ns)  # sent, never answered: as unknown as never sent
        if self.request_log is not None:
            self.request_log.abandoned(self.index + 1, sent_ns, intended_ns)

    @property
    def planned_window_ns(self) -> int:
        return round(self.window_s * self.trials_max * 1e9)

    def _censor(self, intended_ns: int) -> None:
        self.censored_offsets.record_value((intended_ns - self.window_start_ns) // 1000)

    def censored_latencies(self) -> HdrHistogram:
        """Open loop: the lower bounds (window end - intended time, microseconds) of the latencies of the window's
        arrivals that were never sent or never answered."""
        return censored_bounds(self.censored_offsets, (self.window_end_ns - self.window_start_ns) // 1000)

    def in_window(self, at_ns: int) -> bool:
        return self.window_start_ns <= at_ns < self.window_end_ns

    def _completed(
        self, outcome: Outcome, sent_ns: int, done_ns: int, intended_ns: int | None, images: int = 0, code: str = ""
    ) -> bool:
        """Count one outcome and time it; True when it completed inside the measured window."""
        self.counts[outcome] += 1
        completed_in_window = self.in_window(done_ns)
        if completed_in_window:
            self.window_counts[outcome] += 1
        latency_us = trial_number = None
        if intended_ns is None:
            if completed_in_window:
                latency_us = self._record_latency(self.histograms[outcome], done_ns - sent_ns)
                if self.trials_max > 1:
                    trial_number = self._trial_for(done_ns)
                    trial = self.trial(trial_number)
                    trial.end_ns = max(trial.end_ns, done_ns)
                    trial.counts[outcome] += 1
                    trial.histogram(outcome).record_value(latency_us)
                    if outcome is Outcome.OK:
                        trial.images_ok += images
        elif self.in_window(intended_ns):
            latency_us = self._record_latency(self.histograms[outcome], done_ns - intended_ns)
            if outcome is Outcome.OK:
                self._record_latency(self.service_histogram, done_ns - sent_ns)
            if self.trials_max > 1:  # open-loop stability windows: an arrival counts in the window it was due in
                trial_number = self.trial_of(intended_ns)
                trial = self.trial(trial_number)
                trial.counts[outcome] += 1
                trial.histogram(outcome).record_value(latency_us)
                if outcome is Outcome.OK:
                    trial.images_ok += images
        if self.request_log is not None:
            self.request_log.completed(self.index + 1, outcome, code, sent_ns, done_ns, intended_ns, latency_us,
                                       images, None if trial_number is None else trial_number + 1)
        return completed_in_window

    def _record_latency(self, histogram: HdrHistogram, elapsed_ns: int) -> int:
        latency_us = (elapsed_ns + 500) // 1000
        if latency_us > HIGHEST_LATENCY_US:
            self.latencies_clamped += 1
            latency_us = HIGHEST_LATENCY_US
        latency_us = max(latency_us, LOWEST_LATENCY_US)
        histogram.record_value(latency_us)
        return latency_us

    def _trial_for(self, done_ns: int) -> int:
        if not self.window_requests:
            return self.trial_of(done_ns)
        number = min(self._counted // self.window_requests, self.trials_max - 1)
        self._counted += 1
        return number

    def trial_span_ns(self, number: int) -> tuple[int, int]:
        """When trial ``number`` began and ended: by time, its ``window_s``; by count, from the end of the one
        before (the window's start for the first) to its last completion."""
        if not self.window_requests:
            trial_ns = round(self.window_s * 1e9)
            return self.window_start_ns + number * trial_ns, self.window_start_ns + (number + 1) * trial_ns
        start_ns = self.trial(number - 1).end_ns if number else self.window_start_ns
        return start_ns, max(self.trial(number).end_ns, start_ns)

    def trial_of(self, done_ns: int) -> int:
        """The trial (from 0) a closed-loop request completed at ``done_ns`` in the measured window counts in."""
        return (done_ns - self.window_start_ns) // round(self.window_s * 1e9)

    def trial(self, number: int) -> Trial:
        """Trial ``number`` (from 0), created with those before it."""
        while len(self.trials) <= number:
            self.trials.append(Trial())
        return self.trials[number]

    def _note_cpu(self, now_ns: int) -> None:
        self.cpu_seconds = time.process_time() - self._cpu_start_s
        elapsed_s = (now_ns - self.start_ns) / 1e9
        if elapsed_s > 0:
            self.cpu_percent = [round(100 * self.cpu_seconds / elapsed_s, 1)]

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
        if not self.cpu_percent:
            self._note_cpu(now_ns)

    def resize_window(self, window_s: float, now_ns: int) -> bool:
        """Make the open measured window ``window_s`` long: grown to hold more samples, or cut back (never below
        its planned length, nor before now) once it holds them; False when it has ended or nothing changes."""
        end_ns = max(self.window_start_ns + round(window_s * 1e9), self.window_start_ns + self.planned_window_ns,
                     now_ns)
        if self.interrupted or now_ns >= self.window_end_ns or end_ns == self.window_end_ns:
            return False
        self.window_end_ns = end_ns
        return True

    @property
    def grown(self) -> bool:
        """The measured window ran past its planned length to hold its objectives' samples."""
        return self.window_end_ns - self.window_start_ns > self.planned_window_ns

    def end_after_trials(self, trials: int, stable: bool, now_ns: int | None = None) -> None:
        """Stability judged after ``trials`` windows: the measured window ends with the last of them; open loop
        (given ``now_ns``), when it was judged, so that every arrival already scheduled into it stays counted."""
        self.trials_used, self.stable = trials, stable
        _, last_end_ns = self.trial_span_ns(trials - 1)
        end_ns = last_end_ns + (1 if self.window_requests else 0)
        if self.open_loop and now_ns is not None:
            end_ns = max(end_ns, now_ns)
        self.window_end_ns = min(self.window_end_ns, end_ns)

    def trial_figures(self, number: int) -> dict:
        """Images/sec, successes and their latency figures (:func:`ipsbench.loadgen.stability.window_figures`) of
        trial ``number``."""
        trial = self.trial(number)
        start_ns, end_ns = self.trial_span_ns(number)
        return window_figures(trial.images_ok, (end_ns - start_ns) / 1e9, trial.histograms.get(Outcome.OK))

    def settled(self) -> StepRecord:
        """The step as reported: for a stability-judged closed-loop step, its last 3 trials together (the whole
        step's counts and errors unchanged); otherwise the step itself (an open-loop step's windows only judge its
        stability: its arrivals came at one rate throughout, and its open-loop accounting is the whole window's)."""
        if self.trials_max <= 1 or not self.trials_used or self.open_loop:
            return self
        first = max(self.trials_used - STABLE_WINDOWS, 0)
        chosen = [self.trial(n) for n in range(first, self.trials_used)]
        view_start_ns, _ = self.trial_span_ns(first)
        _, view_end_ns = self.trial_span_ns(self.trials_used - 1)
        view = StepRecord(
            index=self.index, concurrency=self.concurrency, warmup_s=self.warmup_s, window_s=self.window_s,
            start_ns=self.start_ns, rate_per_s=self.rate_per_s, issued=self.issued, counts=dict(self.counts),
            latencies_clamped=self.latencies_clamped, errors=self.errors, interrupted=self.interrupted,
            window_end_ns=view_end_ns, trials_max=self.trials_max, window_requests=self.window_requests,
            trials=self.trials, trials_used=self.trials_used, stable=self.stable, phase=self.phase,
            cpu_seconds=self.cpu_seconds, cpu_percent=self.cpu_percent, accuracy=self.accuracy,
        )
        view.window_start_ns = view_start_ns
        for trial in chosen:
            for outcome, n in trial.counts.items():
                view.window_counts[outcome] += n
            view.window_images_ok += trial.images_ok
            for outcome, histogram in trial.histograms.items():
                add_histogram(view.histograms[outcome], histogram)
        return view

    @property
    def measured_window_s(self) -> float:
        """Length of the window actually measured (shorter than planned after an interruption)."""
        return (self.window_end_ns - self.window_start_ns) / 1e9

    def identity_holds(self) -> bool:
        return self.issued == sum(self.counts.values())


class RunRecorder:
    """The steps of one run, in order; ``current`` is the step new requests are issued into."""

    def __init__(self, clock_ns: Callable[[], int] = time.perf_counter_ns) -> None:
        self._clock_ns = clock_ns
        self.request_log: RequestLog | None = None
        """Where the steps' requests are also written, one row each (set before the first step opens)."""
        self.started_ns = self._clock_ns()
        # Wall-clock anchor, only to line steps up with other timelines (GPU samples, server logs); durations
        # always come from the monotonic clock.
        self.started_unix_s = time.time()
        self.steps: list[StepRecord] = []
        self.current: StepRecord | None = None

    def now_ns(self) -> int:
        return self._clock_ns()

    def admit(self, now_ns: int) -> StepRecord | None:
        """The step a request issued now belongs to, or None when nothing may be issued (between steps, or after
        the current step's window)."""
        step = self.current
        return step if step is not None and step.issuing(now_ns) else None

    def unix_s(self, clock_ns: int) -> float:
        """Wall-clock time of a reading of this recorder's monotonic clock."""
        return self.started_unix_s + (clock_ns - self.started_ns) / 1e9

    def open_step(
        self, concurrency: int, warmup_s: float, window_s: float, rate_per_s: float | None = None,
        index: int | None = None, trials_max: int = 1, phase: str | None = None, window_requests: int = 0,
    ) -> StepRecord:
        """Start a step now; ``index`` defaults to the next one (a worker passes the master's)."""
        step = StepRecord(
            index=len(self.steps) if index is None else index, concurrency=concurrency, warmup_s=warmup_s,
            window_s=window_s, start_ns=self._clock_ns(), rate_per_s=rate_per_s, trials_max=trials_max,
            phase=phase, request_log=self.request_log, window_requests=window_requests,
        )
        if self.request_log is not None:
            self.request_log.begin_step(step.start_ns)
        self.steps.append(step)
        self.current = step
        return step

    def close_step(self) -> None:
        """No further requests are issued into the current step (its stragglers still record into it)."""
        self.current = None
        if self.request_log is not None:
            self.request_log.flush()

    def interrupt(self) -> None:
        """Stop issuing: the current step's window ends now."""
        if self.current is not None:
            self.current.interrupt(self._clock_ns())
        self.current = None
        if self.request_log is not None:
            self.request_log.flush()

    def close_request_log(self) -> None:
        """The run is over: write out and close the per-request log, if there is one."""
        if self.request_log is not None:
            self.request_log.close()
