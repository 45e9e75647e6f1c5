"""The locust users that drive a KServe v2 target with pre-serialized requests: closed loop and open loop."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Protocol

import gevent
import gevent.pool
import grpc
from google.protobuf.message import DecodeError
from locust import User, task
from locust.runners import WorkerRunner

from loadgen.arrivals import arrival_process, trace
from loadgen.client import channel_credentials, init_grpc_gevent, model_infer_bytes, open_channel, parse_infer_response
from loadgen.payloads import top_classes
from loadgen.recorder import StepRecord
from loadgen.settings import TargetSettings, WorkloadSettings
from loadgen.workload import PreparedWorkload, prepare_workload

IDLE_POLL_S = 0.02
"""How often an idle user (between steps) looks for a step to issue into."""
SCHEDULE_SLICE_S = 0.05
"""An open-loop sender waiting for its next arrival wakes at least this often to notice an interruption."""
REQUEST_TYPE = "grpc"
REQUEST_NAME = "ModelInfer"


@dataclass(frozen=True)
class Workload:
    """What every user sends: the serialized requests, the call that sends them, and its deadline."""

    infer: grpc.UnaryUnaryMultiCallable
    requests: tuple[bytes, ...]
    images_per_request: int
    deadline_s: float
    metadata: tuple[tuple[str, str], ...] | None = None
    checked_requests: tuple[bytes, ...] = ()
    """Accuracy under load: the requests asking for their top classes, sent every ``check_every``-th time."""
    labels: tuple[tuple[int | None, ...], ...] = ()
    check_every: int = 0

    @classmethod
    def over(cls, channel: grpc.Channel, prepared: PreparedWorkload, target: TargetSettings) -> Workload:
        """The prepared requests, sent over ``channel`` with ``target``'s deadline and headers."""
        payloads = prepared.payloads
        check_every = prepared.check_every if payloads.checked_requests else 0
        return cls(model_infer_bytes(channel), payloads.requests, payloads.images_per_request, target.deadline_s,
                   tuple(target.headers) or None, payloads.checked_requests, payloads.labels, check_every)

    @classmethod
    def connect(cls, target: str, model: str, **workload: object) -> Workload:
        """For a locustfile: describe ``model`` on ``target`` (host:port), build its requests (``workload``:
        :class:`~loadgen.settings.WorkloadSettings` fields), and open the channel they go over."""
        init_grpc_gevent()
        target_settings = TargetSettings(target=target, model=model)
        prepared = prepare_workload(target_settings, WorkloadSettings(**workload))
        return cls.over(open_target_channel(target_settings, prepared), prepared, target_settings)


def open_target_channel(target: TargetSettings, prepared: PreparedWorkload) -> grpc.Channel:
    """The channel the load goes over: TLS as ``target`` says, message limits fitting the requests."""
    credentials = channel_credentials(target.tls_ca, target.tls_cert, target.tls_key)
    return open_channel(target.target, prepared.payloads.request_bytes, credentials)


class StepSource(Protocol):
    """Says which step a request issued now belongs to (a load shape, or a worker following its master)."""

    def admit(self, now_ns: int) -> StepRecord | None: ...


class _KServeSender(User):
    """Sends one request and records its outcome in its step. ``workload`` (and optionally ``steps``) are set
    on a subclass before the run; without ``steps`` the environment's shape says which step is current."""

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
        return (self.steps or self.environment.shape_class).admit(time.perf_counter_ns())

    def _next_request(self) -> tuple[bytes, int | None]:
        """The next request, and its index among the distinct ones when it is a checked one."""
        workload = self.workload
        self._next += 1
        index = self._next % len(workload.requests)
        if workload.check_every and self._next % workload.check_every == 0:
            return workload.checked_requests[index], index
        return workload.requests[index], None

    def _send(
        self, step: StepRecord, next_request: tuple[bytes, int | None], intended_ns: int | None = None
    ) -> None:
        """Send ``request`` (already counted issued) and record how it ended; open loop passes ``intended_ns``."""
        workload = self.workload
        request, checked = next_request
        sent_ns = time.perf_counter_ns()
        if intended_ns is not None:
            step.record_send(intended_ns, sent_ns)
        start_ns = sent_ns if intended_ns is None else intended_ns
        try:
            response = workload.infer(request, timeout=workload.deadline_s, metadata=workload.metadata)
        except grpc.RpcError as error:
            done_ns = time.perf_counter_ns()
            code = error.code() or grpc.StatusCode.UNKNOWN
            step.record_error(code, error.details() or "", sent_ns, done_ns, intended_ns)
            self._report(start_ns, done_ns, 0, error)
        except Exception as error:  # a client-side failure is still a counted outcome
            done_ns = time.perf_counter_ns()
            step.record_client_error(error, sent_ns, done_ns, intended_ns)
            self._report(start_ns, done_ns, 0, error)
        except BaseException:  # killed while in flight (drain bound reached, forced stop)
            step.record_abandoned()
            raise
        else:
            done_ns = time.perf_counter_ns()
            step.record_ok(sent_ns, done_ns, workload.images_per_request, intended_ns)
            if checked is not None:
                self._check(step, response, workload.labels[checked])
            self._report(start_ns, done_ns, len(response), None)

    @staticmethod
    def _check(step: StepRecord, response: bytes, labels) -> None:
        try:
            top = top_classes(parse_infer_response(response))
        except (DecodeError, ValueError, IndexError, UnicodeDecodeError):
            top = [[] for _ in labels]  # not a classification answer: counted wrong, never a crash
        step.record_top_classes(labels, top)

    def _report(self, start_ns: int, done_ns: int, response_length: int, exception: Exception | None) -> None:
        """Let locust's own statistics and UI see the request (ipsbench's numbers come from the recorder)."""
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=REQUEST_NAME,
            response_time=(done_ns - start_ns) / 1e6,
            response_length=response_length,
            exception=exception,
            context={},
        )


class KServeUser(_KServeSender):
    """Closed loop: issue a request, wait for its outcome, record it, issue the next."""

    abstract = True

    @task
    def infer(self) -> None:
        step = self._admit()
        self._idle = step is None
        if step is not None:
            step.record_issued()
            self._send(step, self._next_request())


class OpenLoopUser(_KServeSender):
    """Open loop: sends at the intended times of an arrival process, whether or not earlier requests are done.

    Each request runs in a greenlet of its own, at most ``max_in_flight`` (shared among the step's senders) at
    once; an arrival held back by that cap goes out as soon as a slot frees, late, and its latency still counts
    from its intended time. Arrivals still held back when the window ends (or the step is interrupted) are
    counted as not sent.
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
            self._run_schedule(step)

    def _run_schedule(self, step: StepRecord) -> None:
        senders = max(step.concurrency, 1)
        stream = f"{self.seed}/{step.index}/{self._process_index()}/{self._number}"
        if self.arrival == "trace":
            schedule = trace(self.interarrivals_s, self._process_index() % senders, senders)(step.start_ns)
        else:
            schedule = arrival_process(self.arrival, step.rate_per_s / senders, stream)(time.perf_counter_ns())
        in_flight = gevent.pool.Pool(max(1, math.ceil(self.max_in_flight / senders)))
        try:
            for intended_ns in schedule:
                if intended_ns >= step.window_end_ns or not self._sleep_until(step, intended_ns):
                    break
                step.record_scheduled(intended_ns)
                if in_flight.full():
                    in_flight.wait_available(timeout=max(step.window_end_ns - time.perf_counter_ns(), 0) / 1e9)
                if in_flight.full() or step.interrupted:
                    step.record_not_sent(intended_ns)
                    self._count_not_sent(step, schedule)
                    break
                step.record_issued()
                in_flight.spawn(self._send, step, self._next_request(), intended_ns)
            in_flight.join()
        except BaseException:  # stopped past the drain bound: what is still in flight is abandoned
            in_flight.kill(block=True)
            raise

    @staticmethod
    def _sleep_until(step: StepRecord, at_ns: int) -> bool:
        """Sleep until ``at_ns``; False if the step stopped issuing first."""
        while (wait_ns := at_ns - time.perf_counter_ns()) > 0:
            if not step.issuing(time.perf_counter_ns()):
                return False
            gevent.sleep(min(wait_ns / 1e9, SCHEDULE_SLICE_S))
        return True

    @staticmethod
    def _count_not_sent(step: StepRecord, schedule) -> None:
        """The rest of the step's arrivals that the window still held, none of them sent."""
        for intended_ns in schedule:
            if intended_ns >= step.window_end_ns:
                return
            step.record_scheduled(intended_ns)
            step.record_not_sent(intended_ns)

    def _process_index(self) -> int:
        runner = self.environment.runner
        return max(runner.worker_index, 0) if isinstance(runner, WorkerRunner) else 0
