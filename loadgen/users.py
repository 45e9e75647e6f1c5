"""The locust users that drive a KServe v2 target with pre-serialized requests: closed loop and open loop."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import gevent
import grpc
from google.protobuf.message import DecodeError
from locust import User, task
from locust.runners import WorkerRunner
from locust.user.users import LOCUST_STATE_STOPPING

from ipsbench.loadgen.arrivals import arrival_process, trace
from ipsbench.loadgen.client import channel_credentials, model_infer_bytes, open_channel, parse_infer_response
from ipsbench.loadgen.outcomes import debug_text
from ipsbench.loadgen.open_loop import Arrivals
from ipsbench.loadgen.payloads import top_classes
from ipsbench.loadgen.recorder import StepRecord
from ipsbench.loadgen.senders import DRAIN_PERIOD_S, Completed, Issued, Outbox
from ipsbench.loadgen.settings import TargetSettings, WorkloadSettings
from ipsbench.loadgen.workload import PreparedWorkload, prepare_workload

logger = logging.getLogger(__name__)

IDLE_POLL_S = 0.02
"""How often an idle user (between steps) looks for a step to issue into."""
REQUEST_TYPE = "grpc"
REQUEST_NAME = "ModelInfer"


@dataclass(frozen=True)
class Workload:
    """What every user sends: the serialized requests, where they go, and their deadline."""

    open_channel: Callable[[], grpc.Channel]
    """A new channel to the target. Each sender thread sends over a channel of its own: grpcio guards a
    channel's state with ``threading`` locks, which gevent's patching turns into locks that deadlock when OS
    threads contend for them."""
    requests: tuple[bytes, ...]
    images_per_request: int
    deadline_s: float
    metadata: tuple[tuple[str, str], ...] | None = None
    checked_requests: tuple[bytes, ...] = ()
    """Accuracy under load: the requests asking for their top classes, sent every ``check_every``-th time."""
    labels: tuple[tuple[int | None, ...], ...] = ()
    check_every: int = 0

    @classmethod
    def over(cls, prepared: PreparedWorkload, target: TargetSettings) -> Workload:
        """The prepared requests, sent to ``target`` (TLS as it says, message limits fitting the requests) with
        its deadline and headers. A TLS file that cannot be read raises :class:`~ipsbench.loadgen.client.TargetError`."""
        payloads = prepared.payloads
        credentials = channel_credentials(target.tls_ca, target.tls_cert, target.tls_key)
        connect = functools.partial(open_channel, target.target, payloads.request_bytes, credentials)
        check_every = prepared.check_every if payloads.checked_requests else 0
        return cls(connect, payloads.requests, payloads.images_per_request, target.deadline_s,
                   tuple(target.headers) or None, payloads.checked_requests, payloads.labels, check_every)

    @classmethod
    def connect(cls, target: str, model: str, **workload: object) -> Workload:
        """For a locustfile: describe ``model`` on ``target`` (host:port), build its requests (``workload``:
        :class:`~ipsbench.loadgen.settings.WorkloadSettings` fields)."""
        if workload.get("shared_memory", "none") != "none":
            # Nothing here would unregister and remove the regions at the end; ipsbench-load's runs do.
            raise ValueError("shared memory is for ipsbench-load runs (--shared-memory), not for a locustfile")
        target_settings = TargetSettings(target=target, model=model)
        prepared = prepare_workload(target_settings, WorkloadSettings(**workload))
        return cls.over(prepared, target_settings)


InFlight = dict[tuple[int, int, "int | None"], list]
"""A user's requests issued and not yet completed: (id(step), sent_ns, intended_ns) -> [step, how many]."""


class StepSource(Protocol):
    """Says which step a request issued now belongs to: the run's :class:`~ipsbench.loadgen.recorder.RunRecorder`
    (a worker's records the steps its master announces)."""

    def admit(self, now_ns: int) -> StepRecord | None: ...


class _KServeSender(User):
    """Sends requests from sender threads and records how each ended in its step. ``workload`` (and optionally
    ``steps``) are set on a subclass before the run; without ``steps`` the environment's shape's recorder says
    which step is current.

    A user's task runs one step's worth of sending: it starts its sender threads for the step it was admitted
    to, and records what they did (see :mod:`ipsbench.loadgen.senders`) until they end with the step's window. Killed
    before then (the drain bound, a second Ctrl-C), it stops them issuing and counts what is in flight
    ABANDONED."""

    abstract = True
    workload: Workload
    steps: StepSource | None = None
    _user_numbers = itertools.count()

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self._number = next(_KServeSender._user_numbers)
        self._next = self._number  # users start at different requests
        self._idle = False

    def wait_time(self) -> float:
        return IDLE_POLL_S if self._idle else 0.0

    def _admit(self) -> StepRecord | None:
        return (self.steps or self.environment.shape_class.recorder).admit(time.perf_counter_ns())

    def _sending(self, step: StepRecord) -> bool:
        """Sender threads go on issuing into ``step`` while this is true (read from those threads)."""
        return time.perf_counter_ns() < step.window_end_ns and not self._stopping()

    def _stopping(self) -> bool:
        """locust is stopping this user (read from sender threads)."""
        return self._state == LOCUST_STATE_STOPPING

    def _next_request(self) -> tuple[bytes, int | None]:
        """The next request, and its index among the distinct ones when it is a checked one."""
        workload = self.workload
        self._next += 1
        index = self._next % len(workload.requests)
        if workload.check_every and self._next % workload.check_every == 0:
            return workload.checked_requests[index], index
        return workload.requests[index], None

    # --- in a sender thread ---------------------------------------------------------------------------------

    def _send(
        self, outbox: Outbox, step: StepRecord, infer: grpc.UnaryUnaryMultiCallable,
        next_request: tuple[bytes, int | None], intended_ns: int | None,
    ) -> bool:
        """Issue ``request`` with ``infer`` (of this thread's channel) and put how it ended in the outbox; False
        (nothing sent) once the outbox is closed."""
        workload = self.workload
        request, checked = next_request
        sent_ns = time.perf_counter_ns()
        if not outbox.issue(Issued(step, intended_ns, sent_ns)):
            return False
        length, error, top = 0, None, None
        try:
            response = infer(request, timeout=workload.deadline_s, metadata=workload.metadata)
        except Exception as caught:  # a gRPC status, or a client-side failure: either is a counted outcome
            error = caught
        else:
            length = len(response)
            if checked is not None:
                top = _top_classes(response)
        outbox.put(Completed(step, sent_ns, time.perf_counter_ns(), intended_ns, length, error, checked, top))
        return True

    # --- in the user's greenlet -----------------------------------------------------------------------------

    def _run_senders(self, step: StepRecord, start: Callable[[Outbox], None]) -> None:
        """Start sender threads for ``step`` and record what they do until they have all ended."""
        outbox = Outbox()
        in_flight: InFlight = {}
        try:
            start(outbox)
            while True:
                finished = outbox.finished  # read first: then all that the threads did is in what is taken
                self._record(outbox.take(), in_flight)
                if finished:
                    break
                gevent.sleep(DRAIN_PERIOD_S)
        except BaseException:  # killed: stop issuing; what is still in flight is abandoned
            outbox.close()
            self._record(outbox.take(), in_flight)
            abandoned: dict[int, int] = {}
            for (_, sent_ns, intended_ns), (in_flight_step, count) in in_flight.items():
                for _ in range(count):
                    in_flight_step.record_abandoned(sent_ns, intended_ns)
                abandoned[in_flight_step.index] = abandoned.get(in_flight_step.index, 0) + count
            for index, count in abandoned.items():
                logger.info("user stopped with %d requests in flight in step %d: counted abandoned", count, index + 1)
            raise
        step.issuing(time.perf_counter_ns())  # notes the step's CPU time if its window just ended
        if outbox.failure is not None:
            raise outbox.failure

    def _record(self, items: list, in_flight: InFlight) -> None:
        for item in items:
            step = item.step
            if type(item) is Completed:
                key = (id(step), item.sent_ns, item.intended_ns)
                entry = in_flight[key]
                entry[1] -= 1
                if not entry[1]:
                    del in_flight[key]
                self._record_completed(item)
            elif type(item) is Issued:
                in_flight.setdefault((id(step), item.sent_ns, item.intended_ns), [step, 0])[1] += 1
                step.record_issued()
                if item.intended_ns is not None:
                    step.record_send(item.intended_ns, item.sent_ns)
            else:
                step.record_scheduled(item.intended_ns)
                if not item.sent:
                    step.record_not_sent(item.intended_ns, capped=item.capped)

    def _record_completed(self, done: Completed) -> None:
        step, error, workload = done.step, done.error, self.workload
        if error is None:
            step.record_ok(done.sent_ns, done.done_ns, workload.images_per_request, done.intended_ns)
            if done.checked is not None:
                labels = workload.labels[done.checked]
                step.record_top_classes(labels, done.top if done.top is not None else [[] for _ in labels])
        elif isinstance(error, grpc.RpcError):
            code = error.code() or grpc.StatusCode.UNKNOWN
            step.record_error(code, error.details() or "", done.sent_ns, done.done_ns, done.intended_ns,
                              debug_text(error))
        else:
            step.record_client_error(error, done.sent_ns, done.done_ns, done.intended_ns)
        # Let locust's own statistics and UI see the request (ipsbench's numbers come from the recorder).
        start_ns = done.sent_ns if done.intended_ns is None else done.intended_ns
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=REQUEST_NAME,
            response_time=(done.done_ns - start_ns) / 1e6,
            response_length=done.response_length,
            exception=error,
            context={},
        )


def _top_classes(response: bytes) -> list:
    """A checked response's top classes per image; a response that is not a classification answer has none
    (counted wrong, never a crash)."""
    try:
        return top_classes(parse_infer_response(response))
    except (DecodeError, ValueError, IndexError, UnicodeDecodeError):
        return None


class KServeUser(_KServeSender):
    """Closed loop: one sender thread issues a request, waits for its outcome, issues the next."""

    abstract = True

    @task
    def infer(self) -> None:
        step = self._admit()
        self._idle = step is None
        if step is not None:
            self._run_senders(step, lambda outbox: outbox.start(self._closed_loop, outbox, step))

    def _closed_loop(self, outbox: Outbox, step: StepRecord) -> None:
        with self.workload.open_channel() as channel:
            infer = model_infer_bytes(channel)
            while self._sending(step) and self._send(outbox, step, infer, self._next_request(), None):
                pass


class OpenLoopUser(_KServeSender):
    """Open loop: sends at the intended times of an arrival process, whether or not earlier requests are done.

    A scheduler thread hands each arrival, when it is due, to an idle sender thread of a pool that grows ahead of
    demand (see :mod:`ipsbench.loadgen.open_loop`), up to ``max_in_flight`` requests in flight shared among the
    step's senders. An arrival that finds that many already in flight is not sent and counted so; so are the
    window's arrivals left when the step is stopped early.
    """

    abstract = True
    arrival: str = "poisson"
    max_in_flight: int = 256
    seed: int = 0
    interarrivals_s: tuple[float, ...] = ()
    """``arrival = "trace"``: the recorded inter-arrival times, shared among the step's senders."""

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self._last_step: int | None = None

    @task
    def send_on_schedule(self) -> None:
        step = self._admit()
        self._idle = step is None or step.rate_per_s is None or step.index == self._last_step
        if not self._idle:
            self._last_step = step.index
            cap = max(1, math.ceil(self.max_in_flight / max(step.concurrency, 1)))
            arrivals = Arrivals(step, self._schedule(step), cap, send=self._send, stopping=self._stopping,
                                next_request=self._next_request, open_channel=self.workload.open_channel)
            self._run_senders(step, arrivals.start)

    def _schedule(self, step: StepRecord) -> Iterator[int]:
        senders = max(step.concurrency, 1)
        if self.arrival == "trace":
            return trace(self.interarrivals_s, self._process_index() % senders, senders)(step.start_ns)
        stream = f"{self.seed}/{step.index}/{self._process_index()}/{self._number}"
        return arrival_process(self.arrival, step.rate_per_s / senders, stream)(time.perf_counter_ns())

    def _process_index(self) -> int:
        runner = self.environment.runner
        return max(runner.worker_index, 0) if isinstance(runner, WorkerRunner) else 0
