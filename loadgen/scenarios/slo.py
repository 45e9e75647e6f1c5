"""``slo``: the highest rate (open loop) or concurrency (closed loop) whose measured step meets every objective,
found by bracketing and bisection (:class:`ipsbench.loadgen.slo.Search`) within a bounded number of steps."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ipsbench.loadgen.outcomes import ERRORS, Outcome
from ipsbench.loadgen.recorder import StepRecord
from ipsbench.loadgen.report.steps import capped_reason
from ipsbench.loadgen.scenarios.base import Scenario, StepPlan, StepPlanner
from ipsbench.loadgen.scenarios.rate import check_rate
from ipsbench.loadgen.settings import MAX_SEARCH_STEPS, OpenLoopSettings, RunSettings, check_concurrency
from ipsbench.loadgen.slo import MIN_SAMPLES, LatencyObjective, Search, judge_step, parse_objective
from ipsbench.server.flags import option, values

logger = logging.getLogger(__name__)

SEARCH_KINDS = ("rate", "concurrency")


@dataclass(frozen=True, kw_only=True)
class SearchSettings(OpenLoopSettings):
    """``slo``: the highest rate (or concurrency) meeting every objective, by bracketing and bisection."""

    search: str = option("rate", "what to search: rate (open loop) or concurrency", choices=SEARCH_KINDS)
    low: float = option(help="lower end of the bracket searched")
    high: float = option(help="upper end of the bracket searched")
    max_steps: int = option(8, "measured steps at most (the bracket's two ends included)")
    resolution: float = option(0.05, (
        "stop bisecting when the bracket is narrower than this fraction of its lower end (concurrency: 1)"
    ))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search not in SEARCH_KINDS:
            raise ValueError(f"search must be one of {', '.join(SEARCH_KINDS)}, got {self.search!r}")
        if self.search == "rate":
            check_rate(self.low)
            check_rate(self.high)
        else:
            check_concurrency((int(self.low), int(self.high)))
            if self.low != int(self.low) or self.high != int(self.high):
                raise ValueError("a concurrency search needs whole numbers for --low and --high")
        if not self.low < self.high:
            raise ValueError(f"--low must be below --high, got {self.low:g} and {self.high:g}")
        if not 2 <= self.max_steps <= MAX_SEARCH_STEPS:
            raise ValueError(f"max steps must be in [2, {MAX_SEARCH_STEPS}], got {self.max_steps}")
        if not 0 < self.resolution < 1:
            raise ValueError(f"resolution must be in (0, 1), got {self.resolution:g}")

    @property
    def open_loop(self) -> bool:
        return self.search == "rate"

    @property
    def step_count(self) -> int:
        return self.max_steps


def step_meets(
    step: StepRecord, objectives: Sequence[LatencyObjective], max_error_rate: float, sample_rule: str = MIN_SAMPLES
) -> tuple[bool, list[str]]:
    """Whether a (settled, merged) step meets every objective, and why not."""
    errors = sum(step.counts[o] for o in ERRORS)
    error_rate = errors / step.issued if step.issued else 0.0
    judged = judge_step(step, objectives, error_rate, max_error_rate, sample_rule)
    why = [entry["why"] for entry in judged if not entry["met"]]
    if not step.identity_holds():
        why.append("not every issued request is accounted for")
    if step.window_counts[Outcome.OK] == 0:
        why.append("no successful request in the measured window")
    if step.capped:
        why.append(capped_reason(step))
    return not why, why


class SearchPlanner(StepPlanner):
    """Chooses each step from the result of the one before (see :class:`ipsbench.loadgen.slo.Search`)."""

    def __init__(self, search: Search, objectives: Sequence[LatencyObjective], max_error_rate: float,
                 warmup_s: float, window_s: float, sample_rule: str = MIN_SAMPLES) -> None:
        super().__init__()
        self.search = search
        self.objectives = tuple(objectives)
        self.max_error_rate = max_error_rate
        self.sample_rule = sample_rule
        self.warmup_s, self.window_s = warmup_s, window_s
        self._values: list[float] = []

    @property
    def planned_step_count(self) -> int:
        return self.search.max_steps

    def search_result(self) -> dict:
        return self.search.describe()

    def next_plan(self, previous: StepRecord | None) -> StepPlan | None:
        if self._values and previous is not None:
            if previous.interrupted:
                return None
            met, why = step_meets(previous, self.objectives, self.max_error_rate, self.sample_rule)
            self.search.record(self._values[-1], met, previous.index, why)
            logger.info("%s %g: %s", self.search.kind, self._values[-1], "meets the SLO" if met else "; ".join(why))
        value = self.search.next_value()
        if value is None:
            logger.info("search over: %s; best %s", self.search.stopped_because, self.search.best)
            return None
        self._values.append(value)
        if self.search.kind == "concurrency":
            return StepPlan(users=int(value), warmup_s=self.warmup_s, window_s=self.window_s, phase="search")
        return StepPlan(users=0, warmup_s=self.warmup_s, window_s=self.window_s, rate_per_s=value, phase="search")


def search_planner(settings: RunSettings) -> SearchPlanner:
    steps = settings.steps
    return SearchPlanner(
        Search(steps.search, steps.low, steps.high, steps.max_steps, steps.resolution),
        [parse_objective(text) for text in settings.validity.latency_slo],
        settings.validity.max_error_rate, steps.warmup_s, steps.window_s, settings.validity.sample_rule,
    )


SLO = Scenario(
    name="slo", help="search the highest rate or concurrency meeting the SLO", description=SearchSettings.__doc__,
    settings=SearchSettings, planner=search_planner,
    from_args=lambda args: SearchSettings(**values(args, SearchSettings)),
)
