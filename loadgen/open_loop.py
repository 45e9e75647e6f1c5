"""One open-loop user's sending for one step: arrivals issued at their intended times, however long earlier ones take.

A scheduler thread walks the arrival process. At each arrival's intended time it hands the arrival to an idle
sender thread, which sends it and waits for the answer; the scheduler itself never waits for an answer, so a
stalled request holds up only the thread that sent it. The pool of sender threads grows ahead of demand: when the
scheduler hands out the last idle thread, another starts (and connects) before the next arrival needs it, up to
the user's in-flight cap. An arrival that finds the cap's worth of requests already in flight is not sent and
counted so (the target did not keep up with the rate); one the scheduler reaches only after the window has closed
(it fell behind) or after the step was stopped is counted not sent too. Every arrival is thus either sent (on
time or late, as its send time says) or counted not sent, and why.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import grpc

from ipsbench.loadgen.client import model_infer_bytes
from ipsbench.loadgen.recorder import LATE_TOLERANCE_US
from ipsbench.loadgen.senders import Outbox, Scheduled, sleep_until, thread_lock

SCHEDULE_SLICE_S = 0.05
"""The scheduler waiting for its next arrival wakes at least this often to notice an interruption."""
FIRST_SENDERS = 4
"""Sender threads an open-loop user starts a step with (fewer when its in-flight cap is lower)."""

Job = tuple[int, tuple[bytes, "int | None"]]
"""An arrival handed to a sender thread: its intended time and its request."""
Send = Callable[[Outbox, object, grpc.UnaryUnaryMultiCallable, tuple[bytes, "int | None"], int], bool]


class _Slot:
    """Where the scheduler hands one idle sender thread its next job (None: stop)."""

    __slots__ = ("_ready", "_job")

    def __init__(self) -> None:
        self._ready = thread_lock()
        self._ready.acquire()
        self._job: Job | None = None

    def give(self, job: Job | None) -> None:
        self._job = job
        self._ready.release()

    def take(self) -> Job | None:
        """Block this thread until a job (or None) is given."""
        self._ready.acquire()
        return self._job


class Arrivals:
    """A step's arrivals for one user: ``schedule`` gives their intended times; ``send`` issues one over a sender
    thread's ``infer`` and returns False once the outbox is closed; ``stopping()`` says the user is stopping;
    ``next_request`` gives each sent arrival its request; ``open_channel`` a channel for each sender thread."""

    def __init__(self, step, schedule: Iterator[int], cap: int, *, send: Send, stopping: Callable[[], bool],
                 next_request: Callable[[], tuple[bytes, int | None]],
                 open_channel: Callable[[], grpc.Channel]) -> None:
        self.step, self.cap = step, cap
        self._schedule = schedule
        self._send, self._stopping, self._next_request, self._open_channel = send, stopping, next_request, open_channel
        self._lock = thread_lock()
        self._idle: list[_Slot] = []
        self._senders = 0
        self._over = False

    def start(self, outbox: Outbox) -> None:
        """Start the sender threads the step begins with, and the scheduler."""
        for _ in range(min(self.cap, FIRST_SENDERS)):
            self._start_sender(outbox, None)
        outbox.start(self._run, outbox)

    def _start_sender(self, outbox: Outbox, job: Job | None) -> None:
        """A new sender thread with ``job``, or idle: offered to the scheduler at once, while it still connects.
        Only the scheduler (and :meth:`start`, before it) adds sender threads."""
        slot = _Slot()
        with self._lock:
            self._senders += 1
            if job is None:
                self._idle.append(slot)
        if job is not None:
            slot.give(job)
        outbox.start(self._sender, outbox, slot)

    # --- the scheduler thread -------------------------------------------------------------------------------

    def _run(self, outbox: Outbox) -> None:
        step = self.step

        def keep_waiting() -> bool:
            return time.perf_counter_ns() < step.window_end_ns and not self._stopping() and not outbox.closed

        try:
            for intended_ns in self._schedule:
                if intended_ns >= step.window_end_ns:
                    break
                if not sleep_until(intended_ns, keep_waiting, SCHEDULE_SLICE_S) or self._past(outbox, intended_ns):
                    self._never_sent(outbox, intended_ns)
                    break
                self._dispatch(outbox, intended_ns)
        finally:
            self._end()

    def _past(self, outbox: Outbox, intended_ns: int) -> bool:
        """The arrival due at ``intended_ns`` comes too late to send: the user stopped meanwhile, or the window
        has closed and the scheduler, fallen behind, reaches it late."""
        if outbox.closed or self._stopping():
            return True
        now_ns = time.perf_counter_ns()
        return now_ns >= self.step.window_end_ns and now_ns - intended_ns > LATE_TOLERANCE_US * 1000

    def _dispatch(self, outbox: Outbox, intended_ns: int) -> None:
        """Hand the arrival due now to an idle sender thread, or a new one; at the cap, count it not sent."""
        with self._lock:
            slot = self._idle.pop() if self._idle else None
            room = self._senders < self.cap
            spare = room and slot is not None and not self._idle
        if slot is None and not room:
            outbox.put(Scheduled(self.step, intended_ns, sent=False, capped=True))
            return
        outbox.put(Scheduled(self.step, intended_ns))
        job = (intended_ns, self._next_request())
        if slot is None:
            self._start_sender(outbox, job)  # none was idle: this one sends late by its start
            return
        slot.give(job)
        if spare:
            self._start_sender(outbox, None)  # the last idle one is taken: a spare for the next arrival

    def _never_sent(self, outbox: Outbox, intended_ns: int) -> None:
        """Count the arrival at ``intended_ns`` and the rest of the window's as not sent."""
        for not_sent_ns in itertools.chain((intended_ns,), self._schedule):
            if not_sent_ns >= self.step.window_end_ns:
                break
            outbox.put(Scheduled(self.step, not_sent_ns, sent=False))

    def _end(self) -> None:
        """No more arrivals: idle sender threads stop, busy ones once their request has ended."""
        with self._lock:
            self._over = True
            idle, self._idle = self._idle, []
        for slot in idle:
            slot.give(None)

    # --- a sender thread ------------------------------------------------------------------------------------

    def _sender(self, outbox: Outbox, slot: _Slot) -> None:
        """Send each job handed to ``slot``, over a channel of its own, until it is handed None."""
        try:
            with self._open_channel() as channel:
                infer = model_infer_bytes(channel)
                while (job := slot.take()) is not None:
                    intended_ns, request = job
                    if not self._send(outbox, self.step, infer, request, intended_ns):
                        return  # the outbox is closed: the user stopped
                    if not self._offer(slot):
                        return
        finally:
            with self._lock:
                self._senders -= 1

    def _offer(self, slot: _Slot) -> bool:
        """This thread is idle again: offer it to the scheduler; False when the arrivals are over."""
        with self._lock:
            if self._over:
                return False
            self._idle.append(slot)
        return True
