"""Per-model request queue and dynamic batcher: one future per request, a recomputed deadline, N engine instances.

The collector takes an idle instance, then forms a batch from the head of the queue: it dispatches as soon as the
batch is full (``max_batch_size``), cannot grow (the next request does not fit), or the oldest request has waited
``max_queue_delay_microseconds``; before that, it dispatches the largest ``preferred_batch_size`` it can form.
Without preferred sizes, as in Triton, the full batch is the preferred one. Engine calls run in a thread pool
with one thread per instance; when a call ends, the engine thread schedules one callback on the event loop that
resolves the batch's request futures and hands the instance back (no task per batch, no chained futures: each
loop hop costs a context switch). Every request ends in exactly one result or one error: a failed batch fails all
its requests; if the collector dies, everything pending fails. A bounded queue (``max_queue_size``) rejects at
once. Queue timeouts follow Triton's queue policy and are applied when a batch is formed: a request's timeout is
``default_timeout_microseconds``, or its own ``timeout`` parameter when that is shorter and the policy has
``allow_timeout_override`` (a longer one is clamped to the default). Past its timeout a request is rejected with
UNAVAILABLE (``REJECT``) or moved to a delayed queue (``DELAY``) that is served only while no request still inside
its timeout is waiting.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ipsbench.server.backends.base import ModelInstance
from ipsbench.server.batching.batch import MergeBuffers, split
from ipsbench.server.dataplane import ModelInputs, QueuedRequest, RequestResult
from ipsbench.server.errors import (
    QUEUE_FULL_MESSAGE,
    QUEUE_TIMEOUT_MESSAGE,
    SHUTTING_DOWN_MESSAGE,
    ServerError,
    internal_error,
    new_request_id,
    unavailable,
)
from ipsbench.server.model_spec import BatchingPolicy
from ipsbench.server.stats import ModelStats, Timing

log = logging.getLogger(__name__)


class Batcher:
    """Queue, batch and execute requests for one model version."""

    def __init__(
        self,
        label: str,
        policy: BatchingPolicy,
        instances: Sequence[ModelInstance],
        output_names: Sequence[str],
        stats: ModelStats,
        allow_timeout_override: bool = False,
    ) -> None:
        if not instances:
            raise ValueError("a batcher needs at least one instance")
        self._label = label
        self._policy = policy
        self._instances = list(instances)
        self._output_names = list(output_names)
        self._stats = stats
        self._batched = policy.max_batch_size > 0
        self._queue: collections.deque[QueuedRequest] = collections.deque()
        self._delayed: collections.deque[QueuedRequest] = collections.deque()
        """Requests past their queue timeout under the DELAY action, in arrival order."""
        self._allow_timeout_override = allow_timeout_override
        self._timed = policy.default_timeout_ns > 0 or allow_timeout_override
        self._next_deadline_ns = 0
        """The earliest deadline in the queue, or 0 when none: no scan for expired requests before then."""
        self._idle: collections.deque[ModelInstance] = collections.deque()
        self._executor = ThreadPoolExecutor(max_workers=len(self._instances), thread_name_prefix=f"engine-{label}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future | None = None
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Future] = set()
        """One future per batch being executed, resolved when its requests have their results."""
        self._closed_reason: ServerError | None = None
        self._buffers = {id(instance): MergeBuffers() for instance in self._instances}
        """Each instance's batch arrays (used only on that instance's thread)."""

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._idle.extend(self._instances)
        self._collector = loop.create_task(self._collect_forever(), name=f"batcher-{self._label}")
        self._collector.add_done_callback(self._on_collector_done)

    @property
    def alive(self) -> bool:
        return self._collector is not None and not self._collector.done()

    async def stop(self, wait: bool = True) -> None:
        """Stop collecting and fail what is still queued; with ``wait``, let running batches finish and close
        the engines, else leave running engine calls behind (the process is about to exit)."""
        self._closed_reason = unavailable(SHUTTING_DOWN_MESSAGE)
        if self._collector is not None and not self._collector.done():
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        self._fail_queued(lambda: unavailable(SHUTTING_DOWN_MESSAGE))
        if wait and self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=wait, cancel_futures=True)
        if wait:
            for instance in self._instances:
                instance.close()

    # -- producer side ---------------------------------------------------------------------------------------------

    async def run(self, inputs: ModelInputs, timeout_us: int = 0) -> RequestResult:
        """Queue one request and wait for its share of a batch; a :class:`ServerError` says why it got none. A
        caller that gives up (cancellation) takes its request out of the queue."""
        request = QueuedRequest(
            inputs.arrays, inputs.batch_size, inputs.batch_key, asyncio.get_running_loop().create_future(),
            timeout_us * 1000,
        )
        self.submit(request)
        try:
            return await request.future
        except asyncio.CancelledError:
            self.withdraw(request)
            raise

    def submit(self, request: QueuedRequest) -> None:
        """Queue ``request``; its future resolves to a :class:`RequestResult` or a :class:`ServerError`."""
        if self._closed_reason is not None:
            raise self._closed_reason
        limit = self._policy.max_queue_size
        if limit and len(self._queue) + len(self._delayed) >= limit:
            raise unavailable(QUEUE_FULL_MESSAGE)
        request.enqueued_ns = now = time.perf_counter_ns()
        if self._timed:
            timeout_ns = self._policy.default_timeout_ns
            if self._allow_timeout_override and request.timeout_ns > 0:
                # Shorter is honoured, longer is clamped to the default (no default: no bound to clamp to).
                timeout_ns = min(timeout_ns, request.timeout_ns) if timeout_ns else request.timeout_ns
            if timeout_ns:
                request.deadline_ns = deadline = now + timeout_ns
                if not self._next_deadline_ns or deadline < self._next_deadline_ns:
                    self._next_deadline_ns = deadline
        self._queue.append(request)
        self._stats.set_pending(len(self._queue) + len(self._delayed))
        self._wake()

    def withdraw(self, request: QueuedRequest) -> None:
        """Take a request whose client has gone out of the queue now (it may already be executing), so that the
        pending count does not include it."""
        for queue in (self._queue, self._delayed):
            try:
                queue.remove(request)
            except ValueError:
                continue
            self._stats.set_pending(len(self._queue) + len(self._delayed))
            return

    # -- collector -------------------------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        handle = loop.call_later(timeout_s, self._wake) if timeout_s is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    async def _collect_forever(self) -> None:
        idle = self._idle
        while True:
            while not idle:
                await self._wait(None)  # woken by _finish when an instance is handed back
            instance = idle.popleft()
            try:
                batch = await self._next_batch()
            except BaseException:
                idle.appendleft(instance)
                raise
            self._stats.set_pending(len(self._queue) + len(self._delayed))
            self._execute(instance, batch)

    async def _next_batch(self) -> list[QueuedRequest]:
        policy = self._policy
        while True:
            self._drop_expired()
            queue = self._queue
            if not queue:
                if not self._delayed:
                    self._stats.set_pending(0)
                    await self._wait(None)
                    continue
                # Only delayed requests are left: they have waited long enough, dispatch at once.
                queue = self._delayed
                if not policy.dynamic:
                    return [queue.popleft()]
                count, _, _, _ = self._fit(queue)
            elif not policy.dynamic:
                return [queue.popleft()]
            else:
                count, size, blocked, preferred_count = self._fit(queue)
                now = time.perf_counter_ns()
                deadline = queue[0].enqueued_ns + policy.max_queue_delay_ns
                if not (size >= policy.max_batch_size or blocked or now >= deadline):
                    count = preferred_count
                if not count:
                    await self._wait((deadline - now) / 1e9)
                    continue
            batch = [queue.popleft() for _ in range(count)]
            batch = [r for r in batch if not r.future.done()]
            if batch:
                return batch

    def _fit(self, queue: collections.deque[QueuedRequest]) -> tuple[int, int, bool, int]:
        """Scan from the head for one batch: (requests that fit, their samples, whether the next one did not fit,
        requests up to the largest preferred batch size reached on the way, or 0)."""
        limit = self._policy.max_batch_size
        preferred = self._policy.preferred_batch_sizes
        key = None
        count = size = preferred_count = 0
        for request in queue:
            if request.future.done():
                count += 1
                continue
            if size and (request.batch_key != key or size + request.batch_size > limit):
                return count, size, True, preferred_count
            key = request.batch_key
            size += request.batch_size
            count += 1
            if size in preferred:
                preferred_count = count
        return count, size, False, preferred_count

    def _drop_expired(self) -> None:
        """Drop requests whose client gave up; reject or delay those past their queue timeout."""
        queue = self._queue
        while queue and queue[0].future.done():
            queue.popleft()
        delayed = self._delayed
        while delayed and delayed[0].future.done():
            delayed.popleft()
        if not self._next_deadline_ns or not queue:
            return
        now = time.perf_counter_ns()
        if now < self._next_deadline_ns:
            return
        reject = self._policy.timeout_reject
        kept: collections.deque[QueuedRequest] = collections.deque()
        next_deadline = 0
        for request in queue:
            deadline = request.deadline_ns
            if deadline and deadline <= now:
                if request.future.done():
                    continue
                if reject:
                    request.future.set_exception(unavailable(QUEUE_TIMEOUT_MESSAGE))
                else:
                    delayed.append(request)
                continue
            kept.append(request)
            if deadline and (not next_deadline or deadline < next_deadline):
                next_deadline = deadline
        self._queue = kept
        self._next_deadline_ns = next_deadline
        self._stats.set_pending(len(kept) + len(delayed))

    # -- execution -------------------------------------------------------------------------------------------------

    def _execute(self, instance: ModelInstance, batch: list[QueuedRequest]) -> None:
        """Start the engine call on the instance's thread; :meth:`_finish` runs on the loop when it ends."""
        loop = self._loop
        start_ns = time.perf_counter_ns()
        sizes = [request.batch_size for request in batch]
        done = loop.create_future()
        self._running.add(done)
        try:
            work = self._executor.submit(self._run_batch, instance, [r.inputs for r in batch], sizes)
        except RuntimeError as exc:  # the executor is shut down: the server is stopping
            work = Future()
            work.set_exception(exc)
            self._finish(instance, batch, sizes, start_ns, work, done)
            return

        def on_engine_done(_: Future) -> None:  # on the engine thread
            if loop.is_closed():
                return  # the process is exiting without waiting for this batch
            try:
                loop.call_soon_threadsafe(self._finish, instance, batch, sizes, start_ns, work, done)
            except RuntimeError:  # the loop closed in between
                pass

        work.add_done_callback(on_engine_done)

    def _finish(
        self,
        instance: ModelInstance,
        batch: list[QueuedRequest],
        sizes: list[int],
        start_ns: int,
        work: Future,
        done: asyncio.Future,
    ) -> None:
        """On the loop: resolve every request of the batch with its result or the batch's error, free the
        instance."""
        try:
            if work.cancelled():
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(unavailable(SHUTTING_DOWN_MESSAGE))
                return
            exc = work.exception()
            if exc is not None:
                request_id = new_request_id()
                log.error(
                    "model %s: batch of %d request(s) failed (request id %s)",
                    self._label,
                    len(batch),
                    request_id,
                    exc_info=exc,
                )
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(internal_error(request_id))
                return
            parts, timing = work.result()
            self._stats.record_execution(sum(sizes), timing)
            for request, outputs in zip(batch, parts):
                if not request.future.done():
                    request_timing = Timing(
                        start_ns - request.enqueued_ns,
                        timing.compute_input_ns,
                        timing.compute_infer_ns,
                        timing.compute_output_ns,
                        request.enqueued_ns,
                        timing.computed_ns,
                    )
                    request.future.set_result(RequestResult(outputs, request_timing))
        finally:
            self._idle.append(instance)
            self._running.discard(done)
            done.set_result(None)
            self._wake()

    def _run_batch(
        self, instance: ModelInstance, inputs: list[dict[str, np.ndarray]], sizes: list[int]
    ) -> tuple[list[list[np.ndarray]], Timing]:
        t0 = time.perf_counter_ns()
        buffers = self._buffers[id(instance)]
        merged = buffers.merge(inputs)
        t1 = time.perf_counter_ns()
        outputs = instance.run(merged, self._output_names)
        t2 = time.perf_counter_ns()
        if len(inputs) > 1:
            outputs = buffers.detach(outputs)
        if len(outputs) != len(self._output_names):
            raise RuntimeError(f"engine returned {len(outputs)} outputs, expected {len(self._output_names)}")
        parts = split(outputs, sizes) if self._batched else [list(outputs)]
        t3 = time.perf_counter_ns()
        return parts, Timing(0, t1 - t0, t2 - t1, t3 - t2, computed_ns=t3)

    # -- failure handling ------------------------------------------------------------------------------------------

    def _on_collector_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        request_id = new_request_id()
        log.error("model %s: batcher stopped unexpectedly (request id %s)", self._label, request_id, exc_info=exc)
        self._closed_reason = unavailable(f"model '{self._label}' is not ready: its batcher stopped")
        self._fail_queued(lambda: internal_error(request_id))

    def _fail_queued(self, make_error) -> None:
        for queue in (self._queue, self._delayed):
            while queue:
                request = queue.popleft()
                if not request.future.done():
                    request.future.set_exception(make_error())
        self._stats.set_pending(0)
