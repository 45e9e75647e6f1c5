"""Per model version statistics, kept as Triton keeps them; the single source for ModelStatistics and metrics.

Updated only from the event loop thread; read by the gRPC ModelStatistics RPC and by the Prometheus collector. A
request's outcome is recorded around the call (:func:`recording`), not from inside it; the server's own work before
the queue and after the compute, and each request's whole time in the server, when its response is written
(:class:`RequestClock`).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ipsbench.server.errors import FailureReason, ServerError

FAILURE_REASONS = (FailureReason.REJECTED, FailureReason.CANCELED, FailureReason.BACKEND, FailureReason.OTHER)
REQUEST_DURATION_BUCKETS_S = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)
"""Upper bounds of the request-duration histogram: 1-2-5 steps from 100 µs to 10 s (quantiles are interpolated
within a bucket, so a bucket is at most 2.5 times its lower bound)."""


@dataclass(slots=True)
class Timing:
    """Durations of one execution, in nanoseconds, shared by every request of the batch (``queue_ns``: the
    request's own wait)."""

    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    enqueued_ns: int = 0
    """When the request entered the queue (``perf_counter_ns``)."""
    computed_ns: int = 0
    """When the batch's engine call and split ended (``perf_counter_ns``)."""


@dataclass(slots=True)
class Duration:
    """Triton's StatisticDuration: a count and a cumulative duration in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchDurations:
    """Triton's InferBatchStatistics for one batch size: counts are executions."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class PreprocessStats:
    """Counts and cumulative durations of a front's preprocessing stage (decode, resize, crop, normalize)."""

    requests: int = 0
    """Requests preprocessed successfully."""
    images: int = 0
    """Images in those requests."""
    duration_ns: int = 0
    """Cumulative wall time of the stage for those requests, from submission to the decode pool to the tensor."""
    failures: int = 0
    """Requests refused by preprocessing (undecodable, oversize)."""
    device: str = "cpu"
    """Where the stage preprocesses: ``cpu`` or ``gpu`` (:mod:`ipsbench.server.preprocess.placement`)."""

    def record_success(self, images: int, duration_ns: int) -> None:
        self.requests += 1
        self.images += images
        self.duration_ns += duration_ns

    def record_failure(self) -> None:
        self.failures += 1


@dataclass(slots=True)
class ModelStats:
    """Statistics of one loaded model version."""

    name: str
    version: int
    last_inference_ms: int = 0
    """Wall-clock time of the last inference, milliseconds since the epoch (a timestamp, as in Triton)."""
    inference_count: int = 0
    """Samples served successfully: a request with batch dimension 4 counts 4."""
    execution_count: int = 0
    """Batches executed."""
    pending_count: int = 0
    """Requests waiting in the queue now."""
    inflight: int = 0
    """Requests in the server now: being validated or preprocessed, queued, or executing."""
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    failures: dict[str, Duration] = field(default_factory=lambda: {r: Duration() for r in FAILURE_REASONS})
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchDurations] = field(default_factory=dict)
    preprocess: PreprocessStats | None = None
    """A preprocessing front's stage; None for a model that takes its engine's tensors."""
    instances: int = 0
    """Engine instances of the version (its ``instance_group`` count)."""
    execution_compute_ns: int = 0
    """Cumulative compute time of the executions (input + infer + output, once per batch): the instances' busy time."""
    pre_queue: Duration = field(default_factory=Duration)
    """Answered requests' server time before the queue: receipt to enqueued (validation, preprocessing)."""
    post_compute: Duration = field(default_factory=Duration)
    """Answered requests' server time after the compute: the batch done to the response written."""
    request_buckets: list[int] = field(default_factory=lambda: [0] * (len(REQUEST_DURATION_BUCKETS_S) + 1))
    """Answered requests per request-duration bucket (receipt to response written; the last: above 10 s)."""
    request_seconds: float = 0.0
    """Their cumulative duration in seconds (the histogram's sum)."""

    def set_pending(self, count: int) -> None:
        self.pending_count = count

    def record_execution(self, batch_size: int, timing: Timing) -> None:
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        stats = self.batches.get(batch_size)
        if stats is None:
            stats = self.batches[batch_size] = BatchDurations()
        stats.compute_input.add(timing.compute_input_ns)
        stats.compute_infer.add(timing.compute_infer_ns)
        stats.compute_output.add(timing.compute_output_ns)
        self.execution_compute_ns += timing.compute_input_ns + timing.compute_infer_ns + timing.compute_output_ns

    def record_written(self, received_ns: int, timing: Timing, written_ns: int) -> None:
        """A successful request's response is written: its pre-queue and post-compute time and its whole time."""
        self.pre_queue.add(max(timing.enqueued_ns - received_ns, 0))
        self.post_compute.add(max(written_ns - timing.computed_ns, 0))
        seconds = (written_ns - received_ns) / 1e9
        self.request_buckets[bisect.bisect_left(REQUEST_DURATION_BUCKETS_S, seconds)] += 1
        self.request_seconds += seconds

    def record_success(self, samples: int, request_ns: int, timing: Timing) -> None:
        self.inference_count += samples
        self.success.add(request_ns)
        self.queue.add(timing.queue_ns)
        self.compute_input.add(timing.compute_input_ns)
        self.compute_infer.add(timing.compute_infer_ns)
        self.compute_output.add(timing.compute_output_ns)

    def record_failure(self, reason: str, request_ns: int) -> None:
        self.fail.add(request_ns)
        self.failures.get(reason, self.failures[FailureReason.OTHER]).add(request_ns)


@dataclass(slots=True)
class Served:
    """What a successful request tells its statistics: set by the code inside :func:`recording`."""

    samples: int = 0
    timing: Timing | None = None

    def succeeded(self, samples: int, timing: Timing) -> None:
        self.samples, self.timing = samples, timing


@dataclass(slots=True)
class RequestClock:
    """One inference request's way through the server, from its receipt (the RPC handler's start): the core
    says which model served it and the batch's timing; the transport says when the response is written."""

    received_ns: int = field(default_factory=time.perf_counter_ns)
    stats: ModelStats | None = None
    timing: Timing | None = None

    def served(self, stats: ModelStats, timing: Timing) -> None:
        self.stats, self.timing = stats, timing

    def written(self) -> None:
        """The response is written: record its times in the model's statistics (nothing for a failed request)."""
        if self.stats is not None and self.timing is not None:
            self.stats.record_written(self.received_ns, self.timing, time.perf_counter_ns())
            self.stats = None


@contextmanager
def recording(stats: ModelStats) -> Iterator[Served]:
    """Time one request and record how it ended: a success with what the body set on the yielded
    :class:`Served`, or a failure under the reason its error carries (CANCELED when the client went away)."""
    start_ns = time.perf_counter_ns()
    served = Served()
    try:
        yield served
    except ServerError as exc:
        stats.record_failure(exc.reason, time.perf_counter_ns() - start_ns)
        raise
    except asyncio.CancelledError:
        stats.record_failure(FailureReason.CANCELED, time.perf_counter_ns() - start_ns)
        raise
    except Exception:
        stats.record_failure(FailureReason.OTHER, time.perf_counter_ns() - start_ns)
        raise
    if served.timing is None:
        raise RuntimeError("a request left recording() without an outcome")
    stats.record_success(served.samples, time.perf_counter_ns() - start_ns, served.timing)


@dataclass(slots=True)
class ServerStats:
    """Counts that belong to no loaded model (their labels would come from request fields)."""

    unknown_model_requests: int = 0
    inflight_request_bytes: int = 0
    """Bytes of the inference requests being served now (:mod:`ipsbench.server.admission`)."""
    requests_refused_for_bytes: int = 0
