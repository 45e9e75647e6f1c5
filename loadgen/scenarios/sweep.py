"""``sweep``: closed-loop concurrency levels, one measured step per level (perf_analyzer's concurrency range)."""

from __future__ import annotations

from collections.abc import Sequence

from loadgen.recorder import RunRecorder
from loadgen.scenarios.base import StepPlan, StepShape


class SweepShape(StepShape):
    """Steps through ``concurrency`` levels; each level warms up for ``warmup_s``, then is measured for ``window_s``.

    Usable from a locustfile by subclassing and setting the class attributes.
    """

    abstract = True  # for locust's picker: a locustfile runs its own subclass, not this class
    concurrency: Sequence[int] = (1, 2, 4)
    warmup_s: float = 2.0
    window_s: float = 10.0

    def __init__(
        self,
        concurrency: Sequence[int] | None = None,
        warmup_s: float | None = None,
        window_s: float | None = None,
        recorder: RunRecorder | None = None,
        drain_s: float | None = None,
    ) -> None:
        if concurrency is not None:
            self.concurrency = tuple(concurrency)
        if warmup_s is not None:
            self.warmup_s = warmup_s
        if window_s is not None:
            self.window_s = window_s
        super().__init__(recorder=recorder, drain_s=drain_s)

    def plan(self) -> list[StepPlan]:
        return [StepPlan(users=level, warmup_s=self.warmup_s, window_s=self.window_s) for level in self.concurrency]
