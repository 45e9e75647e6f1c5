"""Arrival processes for open-loop load: tiny factories whose schedules yield *intended* send times.

``poisson(rate_per_s, seed)`` and ``constant(rate_per_s)`` return a schedule: called with a start time
(``perf_counter_ns``), it yields the intended send times after it, forever; the sender decides when to stop.
A seeded schedule is deterministic, so a run can be repeated arrival for arrival.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

Schedule = Callable[[int], Iterator[int]]
"""``schedule(start_ns)`` → intended send times in nanoseconds, increasing."""

MAX_RATE_PER_S = 100_000.0


def _check_rate(rate_per_s: float) -> None:
    if not 0 < rate_per_s <= MAX_RATE_PER_S:
        raise ValueError(f"rate must be in (0, {MAX_RATE_PER_S:g}] requests/s, got {rate_per_s:g}")


def poisson(rate_per_s: float, seed: int | str = 0) -> Schedule:
    """Poisson arrivals (MLPerf Server): independent exponential gaps with mean ``1 / rate_per_s``."""
    _check_rate(rate_per_s)

    def schedule(start_ns: int) -> Iterator[int]:
        rng = random.Random(seed)
        at_s = 0.0
        while True:
            at_s += rng.expovariate(rate_per_s)
            yield start_ns + round(at_s * 1e9)

    return schedule


def constant(rate_per_s: float, seed: int | str = 0) -> Schedule:
    """Evenly spaced arrivals, ``1 / rate_per_s`` apart, the first at the start (``seed`` is not used)."""
    _check_rate(rate_per_s)
    gap_ns = 1e9 / rate_per_s

    def schedule(start_ns: int) -> Iterator[int]:
        number = 0
        while True:
            yield start_ns + round(number * gap_ns)
            number += 1

    return schedule


ARRIVALS: dict[str, Callable[..., Schedule]] = {"poisson": poisson, "constant": constant}
"""Arrival processes by the name users type (``--arrival``)."""


def arrival_process(name: str, rate_per_s: float, seed: int | str = 0) -> Schedule:
    """The schedule of the arrival process called ``name``; ValueError for an unknown name."""
    try:
        factory = ARRIVALS[name]
    except KeyError:
        raise ValueError(f"unknown arrival process {name!r}: use one of {', '.join(ARRIVALS)}") from None
    return factory(rate_per_s, seed)
