"""Stability of a closed-loop step (perf_analyzer's rule): the last 3 measured windows agree within a tolerance
of their mean, for images/sec and for p99; a step whose trials run out first is UNSTABLE."""

from __future__ import annotations

from collections.abc import Sequence

from ipsbench.loadgen.trials import STABLE_WINDOWS

Window = tuple[float, "int | None"]
"""(images/sec, p99 in microseconds or None when the window had no success)."""


def _agree(values: Sequence[float], tolerance: float) -> bool:
    mean = sum(values) / len(values)
    return mean > 0 and all(abs(value - mean) <= tolerance * mean for value in values)


def is_stable(windows: Sequence[Window], tolerance: float) -> bool:
    """True when the last 3 windows agree within ``tolerance`` (e.g. 0.10) for throughput and p99."""
    if len(windows) < STABLE_WINDOWS:
        return False
    last = windows[-STABLE_WINDOWS:]
    if any(p99 is None for _, p99 in last):
        return False
    return _agree([rate for rate, _ in last], tolerance) and _agree([p99 for _, p99 in last], tolerance)


def stability_entry(windows: Sequence[Window], stable: bool | None, trials: int, tolerance: float) -> dict:
    """The step's ``stability`` block in the report."""
    return {
        "stable": bool(stable),
        "trials": trials,
        "windows": [{"images_per_s": round(rate, 3), "p99_us": p99} for rate, p99 in windows],
        "tolerance": tolerance,
    }
