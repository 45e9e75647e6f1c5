"""``slo``: the highest rate (open loop) or concurrency (closed loop) whose measured step meets every objective,
found by bracketing and bisection (:class:`ipsbench.loadgen.slo.Search`) within a bounded number of steps."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ipsbench.loadgen.outcomes import ERRORS, Outcome
from ipsbench.loadgen.recorder import StepRecord
from ipsbench.loadgen.scenarios.base import StepPlan, StepShape
from ipsbench.loadgen.slo import LatencyObjective, Search, judge

logger = logging.getLogger(__name__)


def step_meets(
    step: StepRecord, objectives: Sequence[LatencyObjective], max_error_rate: float
) -> tuple[bool, list[str]]:
    """Whether a (settled, merged) step meets every objective, and why not."""
    errors = sum(step.counts[o] for o in ERRORS)
    error_rate = errors / step.issued if step.issued else 0.0
    judged = judge(list(objectives), step.histograms[Outcome.OK], error_rate, step.issued, max_error_rate)
    why = [entry["why"] for entry in judged if not entry["met"]]
    if not step.identity_holds():
        why.append("not every issued request is accounted for")
    if step.window_counts[Outcome.OK] == 0:
        why.append("no successful request in the measured window")
    return not why, why


class SloSearchShape(StepShape):
    """Chooses each step from the results of those before (see :class:`ipsbench.loadgen.slo.Search`)."""

    abstract = True

    def __init__(
        self,
        search: Search,
        objectives: Sequence[LatencyObjective],
        max_error_rate: float,
        **step_timing,
    ) -> None:
        self.search = search
        self.objectives = tuple(objectives)
        self.max_error_rate = max_error_rate
        self._values: list[float] = []
        super().__init__(**step_timing)

    def plan(self) -> list[StepPlan]:
        return []

    @property
    def planned_step_count(self) -> int:
        return self.search.max_steps

    def next_plan(self) -> StepPlan | None:
        if self._values:
            step = self.merged(self.recorder.steps[-1]).settled()
            if step.interrupted:
                return None
            met, why = step_meets(step, self.objectives, self.max_error_rate)
            self.search.record(self._values[-1], met, step.index, why)
            logger.info("%s %g: %s", self.search.kind, self._values[-1], "meets the SLO" if met else "; ".join(why))
        value = self.search.next_value()
        if value is None:
            logger.info("search over: %s; best %s", self.search.stopped_because, self.search.best)
            return None
        self._values.append(value)
        if self.search.kind == "concurrency":
            return StepPlan(users=int(value), warmup_s=self.warmup_s, window_s=self.window_s, phase="search")
        return StepPlan(users=0, warmup_s=self.warmup_s, window_s=self.window_s, rate_per_s=value, phase="search")
