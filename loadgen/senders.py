"""Sender threads: ModelInfer calls made from real OS threads, their outcomes handed to the gevent side in batches.

locust runs users as greenlets, but grpcio's gevent integration hands every blocking call to gevent's thread pool
and back, which on a 602 KB request costs about half as much CPU again as the call itself. So a user's requests go
out from real threads, which make grpcio's blocking calls directly; each thread appends what happened to an
:class:`Outbox`, and the user's greenlet takes the outbox's contents every ``DRAIN_PERIOD_S`` and records them.
The recorder and locust's statistics are only ever touched from the gevent side.

Primitives are gevent's originals (the process is monkey-patched by locust): real locks, threads and sleeps, so
a waiting sender thread never runs gevent's hub.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import gevent
from gevent import monkey

logger = logging.getLogger(__name__)

DRAIN_PERIOD_S = 0.05
"""How often a user's greenlet takes its sender threads' outcomes (and so how late the recorder may see them)."""
GIL_SWITCH_INTERVAL_S = 0.0005
"""How long a sender thread whose response has arrived waits at most for the GIL while the gevent side runs Python
(recording outcomes, rewriting the partial report). The interpreter's default, 5 ms, would show in the latency
tail as the load generator's own delay."""

_start_new_thread = monkey.get_original("_thread", "start_new_thread")
thread_lock = monkey.get_original("_thread", "allocate_lock")
"""A lock between OS threads (gevent's deadlocks when they contend for it)."""
thread_sleep = monkey.get_original("time", "sleep")
"""``time.sleep`` that sleeps the calling OS thread (gevent's would run the hub there)."""


class Issued(NamedTuple):
    """A request about to go out (counted issued); ``intended_ns`` is its open-loop arrival time, else None."""

    step: object
    intended_ns: int | None
    sent_ns: int


class Completed(NamedTuple):
    """How a sent request ended: ``error`` None with ``response_length`` on success; a ``grpc.RpcError`` or a
    client-side exception otherwise; ``top`` the response's top classes when it was a checked request."""

    step: object
    sent_ns: int
    done_ns: int
    intended_ns: int | None
    response_length: int
    error: Exception | None
    checked: int | None
    top: list | None


class Scheduled(NamedTuple):
    """Open loop: an arrival was due at ``intended_ns``; ``sent`` False: it was never sent, ``capped`` True
    because the in-flight cap's worth of requests were still in flight (else the step stopped first)."""

    step: object
    intended_ns: int
    sent: bool = True
    capped: bool = False


class Outbox:
    """What one user's sender threads did, in order, until the user's greenlet takes it.

    Threads append; only :meth:`issue` is checked against :meth:`close`, under a lock, so that once the greenlet
    has closed the outbox no further request is counted issued and every request counted issued is either
    completed in the outbox or still in flight (the greenlet counts those abandoned).
    """

    def __init__(self) -> None:
        self._items: collections.deque = collections.deque()
        self._lock = thread_lock()
        self._threads = 0
        self.closed = False
        self.failure: BaseException | None = None
        """The first exception a sender thread ended with (a defect: sends record their own errors)."""

    def start(self, target: Callable[..., None], *args) -> None:
        """Run ``target(*args)`` in a new OS thread, counted until it returns."""
        with self._lock:
            self._threads += 1
        _start_new_thread(self._run, (target, args))

    def _run(self, target: Callable[..., None], args: tuple) -> None:
        try:
            target(*args)
        except BaseException as error:  # noqa: BLE001 - handed to the greenlet, which raises it
            logger.exception("sender thread failed")
            self.failure = self.failure or error
        finally:
            with self._lock:
                self._threads -= 1

    @property
    def finished(self) -> bool:
        """No sender thread is left: everything they did is in the outbox."""
        return self._threads == 0

    def issue(self, item: Issued) -> bool:
        """Count a request issued just before it goes out; False (send nothing) once the outbox is closed."""
        with self._lock:
            if self.closed:
                return False
            self._items.append(item)
            return True

    def put(self, item: Completed | Scheduled) -> None:
        self._items.append(item)

    def close(self) -> None:
        """The greenlet stops listening: no further request may be issued."""
        with self._lock:
            self.closed = True

    def take(self) -> list:
        """Everything appended so far, oldest first."""
        items = self._items
        return [items.popleft() for _ in range(len(items))]


@contextmanager
def prompt_senders() -> Iterator[None]:
    """While the block runs (a load run, a worker, the web UI), a thread whose response arrived waits at most
    :data:`GIL_SWITCH_INTERVAL_S` for the GIL; the interpreter's own interval is back afterwards."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def off_the_hub(function: Callable, *args):
    """``function(*args)`` in one of gevent's pool threads, the calling greenlet waiting: for blocking grpcio
    calls outside the send path (describing the model), so that heartbeats and signal handlers go on meanwhile.
    What it raises is raised here (and not also printed by gevent's hub with a traceback)."""

    def call():
        try:
            return function(*args), None
        except Exception as error:
            return None, error

    result, error = gevent.get_hub().threadpool.apply(call)
    if error is not None:
        raise error
    return result


def sleep_until(at_ns: int, keep_waiting: Callable[[], bool], slice_s: float) -> bool:
    """Sleep this OS thread until ``at_ns``, looking at ``keep_waiting`` at least every ``slice_s``; False when it
    said stop first."""
    while (wait_ns := at_ns - time.perf_counter_ns()) > 0:
        if not keep_waiting():
            return False
        thread_sleep(min(wait_ns / 1e9, slice_s))
    return True
