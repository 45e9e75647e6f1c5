"""The locust user that drives a KServe v2 target in closed loop with pre-serialized requests."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import grpc
from locust import User, task

IDLE_POLL_S = 0.02
"""How often an idle user (between steps) looks for a step to issue into."""
REQUEST_TYPE = "grpc"
REQUEST_NAME = "ModelInfer"


@dataclass(frozen=True)
class Workload:
    """What every user sends: the serialized requests, the call that sends them, and its deadline."""

    infer: grpc.UnaryUnaryMultiCallable
    requests: tuple[bytes, ...]
    images_per_request: int
    deadline_s: float


class KServeUser(User):
    """Closed loop: issue a request, wait for its outcome, record it, issue the next.

    ``workload`` is set on a subclass before the run; the environment's shape (a
    :class:`~loadgen.scenarios.base.StepShape`) says which step a request belongs to.
    """

    abstract = True
    workload: Workload
    _user_numbers = itertools.count()

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self._next = next(KServeUser._user_numbers)  # users start at different requests
        self._idle = False

    def wait_time(self) -> float:
        return IDLE_POLL_S if self._idle else 0.0

    @task
    def infer(self) -> None:
        step = self.environment.shape_class.admit(time.perf_counter_ns())
        if step is None:
            self._idle = True
            return
        self._idle = False
        workload = self.workload
        request = workload.requests[self._next % len(workload.requests)]
        self._next += 1
        step.record_issued()
        sent_ns = time.perf_counter_ns()
        try:
            response = workload.infer(request, timeout=workload.deadline_s)
        except grpc.RpcError as error:
            done_ns = time.perf_counter_ns()
            step.record_error(error.code() or grpc.StatusCode.UNKNOWN, error.details() or "", sent_ns, done_ns)
            self._report(sent_ns, done_ns, 0, error)
        except Exception as error:  # a client-side failure is still a counted outcome
            done_ns = time.perf_counter_ns()
            step.record_client_error(error, sent_ns, done_ns)
            self._report(sent_ns, done_ns, 0, error)
        except BaseException:  # killed while in flight (drain bound reached, forced stop)
            step.record_abandoned()
            raise
        else:
            done_ns = time.perf_counter_ns()
            step.record_ok(sent_ns, done_ns, workload.images_per_request)
            self._report(sent_ns, done_ns, response.ByteSize(), None)

    def _report(self, sent_ns: int, done_ns: int, response_length: int, exception: Exception | None) -> None:
        """Let locust's own statistics and UI see the request (ipsbench's numbers come from the recorder)."""
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=REQUEST_NAME,
            response_time=(done_ns - sent_ns) / 1e6,
            response_length=response_length,
            exception=exception,
            context={},
        )
