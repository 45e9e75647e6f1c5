"""``rate``: open-loop arrivals at fixed rates, one measured step per rate (MLPerf Server, perf_analyzer's
request-rate range). The shape only times the steps; :class:`ipsbench.loadgen.users.OpenLoopUser` sends on schedule.

From plain locust (``locust -f this_file.py --headless --host 127.0.0.1:8001``, ``--processes N`` too)::

    from locust import events
    from ipsbench.loadgen.scenarios.rate import RateShape
    from ipsbench.loadgen.users import OpenLoopUser, Workload

    class Rates(RateShape):
        rates_per_s = (20, 40)

    class Sender(OpenLoopUser):
        arrival = "poisson"

    @events.init.add_listener
    def connect(environment, **_):
        Sender.workload = Workload.connect(environment.host, "resnet18")
"""

from __future__ import annotations

from collections.abc import Sequence

from ipsbench.loadgen.scenarios.base import StepPlan, StepShape


class RateShape(StepShape):
    """Steps through ``rates_per_s``; each rate warms up for ``warmup_s``, then is measured for ``window_s``.

    Each step's rate is split evenly among ``senders`` open-loop users (default: one per locust process).
    Usable from a locustfile by subclassing and setting the class attributes, next to a subclass of
    :class:`~ipsbench.loadgen.users.OpenLoopUser`.
    """

    abstract = True  # for locust's picker: a locustfile runs its own subclass, not this class
    rates_per_s: Sequence[float] = (10.0, 20.0)
    senders: int = 0
    phase: str | None = None

    def __init__(self, rates_per_s: Sequence[float] | None = None, **step_timing) -> None:
        """``step_timing``: :class:`StepShape`'s ``warmup_s``, ``window_s``, ``drain_s`` and ``recorder``."""
        if rates_per_s is not None:
            self.rates_per_s = tuple(rates_per_s)
        super().__init__(**step_timing)

    def plan(self) -> list[StepPlan]:
        return [
            StepPlan(users=self.senders, warmup_s=self.warmup_s, window_s=self.window_s, rate_per_s=rate,
                     phase=self.phase)
            for rate in self.rates_per_s
        ]
