"""Tests order events by waiting on a condition (a metric, a gauge, a log line, a report), never on a sleep: the
machines running them are shared and can be slow at any moment. The bound only turns a hang into a failure.

:func:`wait_until` is the one place a test polls; the pause between two looks is its only sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

CONDITION_TIMEOUT_S = 60.0

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float = CONDITION_TIMEOUT_S, what: str = "condition",
               interval_s: float = 0.05, give_up: Callable[[], str | None] | None = None) -> T:
    """Return ``predicate()``'s first true value; fail the test, saying ``what`` it waited for, after ``timeout_s``
    or as soon as ``give_up()`` gives a reason (e.g. the process that was to bring the condition about exited)."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if give_up is not None and (reason := give_up()):
            pytest.fail(f"{reason} before {what}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}", pytrace=False)
        time.sleep(interval_s)
    return value
