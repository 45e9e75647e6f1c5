"""``sweep``: closed-loop concurrency levels, one step per level (perf_analyzer's concurrency range); each level
runs measured windows until the last 3 agree within ``stability`` (at most ``max_trials``). ``offline``,
``single-stream``, ``ramp`` and ``spike`` are sweeps with their own levels."""

from __future__ import annotations

from collections.abc import Sequence

from ipsbench.loadgen.scenarios.base import StepPlan, StepShape


class SweepShape(StepShape):
    """Steps through ``concurrency`` levels; each level warms up for ``warmup_s``, then is measured in windows
    of ``window_s`` (one window when ``max_trials`` is 1).

    Usable from a locustfile by subclassing and setting the class attributes.
    """

    abstract = True  # for locust's picker: a locustfile runs its own subclass, not this class
    concurrency: Sequence[int] = (1, 2, 4)
    stability: float = 0.10
    max_trials: int = 10
    phases: Sequence[str] = ()

    def __init__(
        self,
        concurrency: Sequence[int] | None = None,
        stability: float | None = None,
        max_trials: int | None = None,
        phases: Sequence[str] | None = None,
        **step_timing,
    ) -> None:
        """``step_timing``: :class:`StepShape`'s ``warmup_s``, ``window_s``, ``drain_s`` and ``recorder``."""
        for name, value in (("concurrency", concurrency), ("phases", phases)):
            if value is not None:
                setattr(self, name, tuple(value))
        for name, value in (("stability", stability), ("max_trials", max_trials)):
            if value is not None:
                setattr(self, name, value)
        super().__init__(**step_timing)

    def plan(self) -> list[StepPlan]:
        phases = list(self.phases) or [None] * len(self.concurrency)
        return [
            StepPlan(users=level, warmup_s=self.warmup_s, window_s=self.window_s, trials_max=self.max_trials,
                     tolerance=self.stability, phase=phase)
            for level, phase in zip(self.concurrency, phases)
        ]

