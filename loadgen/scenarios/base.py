"""What a scenario is: the steps it runs (a :class:`StepPlanner`) and its entry in the scenario table
(:class:`Scenario`, listed in :mod:`ipsbench.loadgen.scenarios.catalog`).

Scenarios are plain Python, importable without locust: the load shape that times the steps on locust's side is one
class for every scenario (:mod:`ipsbench.loadgen.shape`). A planner may choose each step from the results of the
steps before it (the ``slo`` search).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipsbench.loadgen.recorder import StepRecord
from ipsbench.loadgen.settings import RunSettings, StepSettings
from ipsbench.loadgen.stability import DEFAULT_STABILITY_METRICS


@dataclass(frozen=True)
class StepPlan:
    """One step: how many users, for how long they warm up and are measured, and (open loop) the target rate."""

    users: int
    """0: one user per locust process (one per worker in a distributed run)."""
    warmup_s: float
    window_s: float
    rate_per_s: float | None = None
    trials_max: int = 1
    """Closed loop: measured windows of ``window_s`` at most, until the last 3 agree (1: one window)."""
    tolerance: float = 0.10
    stability_metrics: tuple[str, ...] = DEFAULT_STABILITY_METRICS
    """What the last 3 windows must agree on (:mod:`ipsbench.loadgen.stability`)."""
    window_requests: int = 0
    """Stability windows by count: each ends after this many completed requests (0: by time, ``window_s``)."""
    phase: str | None = None


class StepPlanner:
    """The steps of a scenario, in order; by default a fixed list."""

    def __init__(self, plans: Sequence[StepPlan] = ()) -> None:
        self._plans = list(plans)
        self._given = 0

    @property
    def planned_step_count(self) -> int:
        """Steps planned (an upper bound for a planner that chooses as it goes)."""
        return len(self._plans)

    def next_plan(self, previous: StepRecord | None) -> StepPlan | None:
        """The next step, or None when the scenario is over; ``previous``: the step before, settled and with every
        process's requests in it (None before the first)."""
        if self._given >= len(self._plans):
            return None
        self._given += 1
        return self._plans[self._given - 1]

    def search_result(self) -> dict | None:
        """The search a planner ran to choose its steps, as the report states it; None for planned steps."""
        return None


@dataclass(frozen=True)
class Scenario:
    """One entry of the scenario table: its command, settings, steps and options.

    ``ipsbench-load <name>`` takes the options of ``settings``' fields (less ``skip``, with this command's own
    ``defaults`` for any option of the run) and those ``add_arguments`` adds; ``from_args`` turns them into the
    step settings and ``planner`` into the steps a run takes.
    """

    name: str
    help: str
    settings: type[StepSettings]
    planner: Callable[[RunSettings], StepPlanner]
    from_args: Callable[[argparse.Namespace], StepSettings]
    description: str = ""
    skip: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
