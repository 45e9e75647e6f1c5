"""Admission by request bytes: the total size of the inference requests the server holds at once is bounded.

gRPC bounds one message (``--grpc-max-message-mb``) and the number of RPCs (``--grpc-max-concurrent-rpcs``), but
not their product: 4,096 RPCs of 64 MiB would be 256 GiB. Each request admitted here is counted until its response
is handed back; one that would take the total over ``--max-inflight-mb`` is answered RESOURCE_EXHAUSTED before
its tensors are validated, copied into a batch or run, so a burst of large requests costs the server at most its
bound (plus the copies each admitted request makes) instead of growing with the burst.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from ipsbench.server.errors import ServerError
from ipsbench.server.stats import ServerStats

MEMORY_SHARE = 4
"""The default bound is this machine's memory divided by this (a request is copied a few times while served)."""


def default_inflight_bytes(max_message_bytes: int) -> int:
    """A quarter of this machine's physical memory, and never less than one largest message."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 16 * 1024**3
    return max(memory // MEMORY_SHARE, max_message_bytes)


class ByteBudget:
    """Bytes of inference requests in the server now, at most ``limit``; counted in ``stats`` for the metrics."""

    def __init__(self, limit: int, stats: ServerStats) -> None:
        self.limit = limit
        self._stats = stats

    @contextmanager
    def holding(self, size: int) -> Iterator[None]:
        """Around serving one request of ``size`` bytes: refused with RESOURCE_EXHAUSTED when it does not fit."""
        stats = self._stats
        if stats.inflight_request_bytes + size > self.limit:
            stats.requests_refused_for_bytes += 1
            raise ServerError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server holds {stats.inflight_request_bytes} bytes of requests; this one's {size} would exceed "
                f"its bound of {self.limit} bytes (--max-inflight-mb); retry later",
            )
        stats.inflight_request_bytes += size
        try:
            yield
        finally:
            stats.inflight_request_bytes -= size
