"""``sweep``: closed-loop concurrency levels, one measured step per level (perf_analyzer's concurrency range)."""

from __future__ import annotations

from collections.abc import Sequence

from loadgen.scenarios.base import StepPlan, StepShape


class SweepShape(StepShape):
    """Steps through ``concurrency`` levels; each level warms up for ``warmup_s``, then is measured for ``window_s``.

    Usable from a locustfile by subclassing and setting the class attributes.
    """

    abstract = True  # for locust's picker: a locustfile runs its own subclass, not this class
    concurrency: Sequence[int] = (1, 2, 4)

    def __init__(self, concurrency: Sequence[int] | None = None, **step_timing) -> None:
        """``step_timing``: :class:`StepShape`'s ``warmup_s``, ``window_s``, ``drain_s`` and ``recorder``."""
        if concurrency is not None:
            self.concurrency = tuple(concurrency)
        super().__init__(**step_timing)

    def plan(self) -> list[StepPlan]:
        return [StepPlan(users=level, warmup_s=self.warmup_s, window_s=self.window_s) for level in self.concurrency]
