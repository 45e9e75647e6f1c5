"""Tests order events by waiting on a condition (a metric, a gauge, a log line, a report), never on a sleep: the
machines running them are shared and can be slow at any moment. The bound only turns a hang into a failure."""

from __future__ import annotations

import time

import pytest

CONDITION_TIMEOUT_S = 60.0


def wait_until(predicate, timeout_s: float = CONDITION_TIMEOUT_S, what: str = "condition",
               interval_s: float = 0.05) -> None:
    """Return once ``predicate()`` is true; fail the test, saying ``what`` it waited for, after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
