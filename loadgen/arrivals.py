"""Arrival processes for open-loop load: tiny factories whose schedules yield *intended* send times.

``poisson(rate_per_s, seed)`` and ``constant(rate_per_s)`` return a schedule: called with a start time
(``perf_counter_ns``), it yields the intended send times after it, forever; the sender decides when to stop.
A seeded schedule is deterministic, so a run can be repeated arrival for arrival.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

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


def trace(interarrivals_s: Sequence[float], part: int = 0, parts: int = 1) -> Schedule:
    """Replay recorded inter-arrival times (seconds); ``part`` of ``parts`` senders takes every ``parts``-th
    arrival, so that together they send the whole trace. The schedule ends with the trace."""
    if not 0 <= part < parts:
        raise ValueError(f"part must be in [0, {parts}), got {part}")

    def schedule(start_ns: int) -> Iterator[int]:
        at_s = 0.0
        for number, gap_s in enumerate(interarrivals_s):
            at_s += gap_s
            if number % parts == part:
                yield start_ns + round(at_s * 1e9)

    return schedule


def read_trace(path: str, limit: int) -> tuple[float, ...]:
    """Inter-arrival times from ``path``: one number (seconds) per line, or a CSV with a column
    ``interarrival_s``; ValueError naming the line that is not one."""
    import csv

    with open(path, encoding="utf-8", newline="") as file:
        first = file.readline()
        file.seek(0)
        if "interarrival_s" in first:
            rows = ((number + 2, row["interarrival_s"]) for number, row in enumerate(csv.DictReader(file)))
        else:
            rows = ((number + 1, line.strip()) for number, line in enumerate(file))
        values = []
        for line, text in rows:
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{path} line {line}: {text!r} is not a number of seconds") from None
            if not 0 <= value < 3600:
                raise ValueError(f"{path} line {line}: inter-arrival {value:g} s is out of [0, 3600)")
            values.append(value)
            if len(values) > limit:
                raise ValueError(f"{path} holds more than {limit} arrivals")
    if not values or sum(values) <= 0:
        raise ValueError(f"{path} holds no inter-arrival times")
    return tuple(values)
