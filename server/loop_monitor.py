"""A serving process watched from inside its event loop: the loop's lag and CPU, and the process's CPU.

A timer on the loop asks to wake every :data:`TICK_S`; how much later it wakes is the loop's lag (a request that
arrives then waits as long before any of its code runs). Each tick also reads the CPU time of the loop's thread (the
front end's own limit: one Python thread at 100 % of a core, whatever the engine's threads do) and of the whole
process, and how many CPUs the process may run on. The readings are plain numbers, exported by
:mod:`ipsbench.server.metrics`; a front-end process mirrors them into its ring for the engine's metrics
(``on_tick``).
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TICK_S = 0.05
"""How often the loop's timer asks to wake."""
LAG_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Upper bounds of the lag histogram (the last bucket: above 1 s)."""


@dataclass(slots=True)
class ProcessReadings:
    """One serving process's counters as its monitor last read them (cumulative since it started)."""

    process_cpu_s: float = 0.0
    """CPU time of every thread of the process."""
    loop_cpu_s: float = 0.0
    """CPU time of the event loop's thread."""
    lag_buckets: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS_S) + 1))
    """Ticks per lag bucket (not cumulative)."""
    lag_s: float = 0.0
    """Cumulative lag of the ticks."""
    cpus: int = 0
    """CPUs the process may run on (its affinity set): its CPU time can grow this fast at most."""

    def observe_lag(self, lag_s: float) -> None:
        self.lag_buckets[bisect.bisect_left(LAG_BUCKETS_S, lag_s)] += 1
        self.lag_s += lag_s


def process_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


class LoopMonitor:
    """The timer task on the running loop; :attr:`readings` as of its last tick."""

    def __init__(self, on_tick: Callable[[ProcessReadings], None] | None = None, tick_s: float = TICK_S) -> None:
        self.readings = ProcessReadings()
        self._on_tick = on_tick
        self._tick_s = tick_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start ticking on the running loop (call from a coroutine of that loop)."""
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="loop-monitor")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        readings = self.readings
        while True:
            due = time.perf_counter() + self._tick_s
            await asyncio.sleep(self._tick_s)
            readings.observe_lag(max(time.perf_counter() - due, 0.0))
            readings.loop_cpu_s = time.thread_time()  # this coroutine runs on the loop's thread
            readings.process_cpu_s = time.process_time()
            readings.cpus = process_cpus()
            if self._on_tick is not None:
                self._on_tick(readings)
