"""Step bookkeeping shared by scenarios: each step runs N users through a warm-up and a measured window,
then stops issuing and waits (bounded) for its in-flight requests before the next step starts."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from locust import LoadTestShape

from loadgen.recorder import RunRecorder, StepRecord

logger = logging.getLogger(__name__)

DRAIN_GRACE_S = 2.0
"""How long past the drain bound a step waits for locust to report its users gone."""


@dataclass(frozen=True)
class StepPlan:
    """One step: how many users, and for how long they warm up and are measured."""

    users: int
    warmup_s: float
    window_s: float


class StepShape(LoadTestShape):
    """A load shape made of steps; users ask :meth:`admit` for the step to issue into before each request.

    ``tick()`` (called by locust about once a second) opens a step with its users, closes it when its window
    ends, returns 0 users until the step's users have left (bounded by ``drain_s``), then opens the next step;
    after the last step it returns None, which stops the test.
    """

    abstract = True
    drain_s: float = 10.0
    """Bound on waiting for in-flight requests after a step; locust's ``stop_timeout`` should match it."""

    def __init__(self, recorder: RunRecorder | None = None, drain_s: float | None = None) -> None:
        super().__init__()
        self.recorder = recorder or RunRecorder()
        if drain_s is not None:
            self.drain_s = drain_s
        self._plans = list(self.plan())
        self._next_plan = 0
        self._draining_since_ns: int | None = None
        self._stopping = False

    @abstractmethod
    def plan(self) -> Sequence[StepPlan]:
        """The steps, in order."""

    @property
    def planned_steps(self) -> list[StepPlan]:
        return list(self._plans)

    def admit(self, now_ns: int) -> StepRecord | None:
        """The step a request issued now belongs to, or None when nothing may be issued."""
        step = self.recorder.current
        if step is not None and step.issuing(now_ns):
            return step
        return None

    def interrupt(self) -> None:
        """Stop issuing at once and run no further step (Ctrl-C, SIGTERM)."""
        self._stopping = True
        self.recorder.interrupt()

    def tick(self) -> tuple[int, float] | None:
        now_ns = self.recorder.now_ns()
        step = self.recorder.current
        if step is not None:
            if step.issuing(now_ns):
                return step.concurrency, _spawn_rate(step.concurrency)
            self.recorder.close_step()
            self._draining_since_ns = now_ns
        if self._draining_since_ns is not None:
            waited_s = (now_ns - self._draining_since_ns) / 1e9
            if self._users_left() and waited_s < self.drain_s + DRAIN_GRACE_S:
                return 0, _spawn_rate(self._users_left())
            self._draining_since_ns = None
        if self._stopping or self._next_plan >= len(self._plans):
            return None
        plan = self._plans[self._next_plan]
        self._next_plan += 1
        logger.info(
            "step %d/%d: %d users, %g s warm-up, %g s measured", self._next_plan, len(self._plans), plan.users,
            plan.warmup_s, plan.window_s,
        )
        self.recorder.open_step(plan.users, plan.warmup_s, plan.window_s)
        return plan.users, _spawn_rate(plan.users)

    def _users_left(self) -> int:
        return self.runner.user_count if self.runner is not None else 0


def _spawn_rate(users: int) -> float:
    """Start or stop all of a step's users in one go."""
    return float(max(users, 1))
