"""Step bookkeeping shared by scenarios: each step runs N users through a warm-up and a measured window,
then stops issuing and waits (bounded) for its in-flight requests before the next step starts.

A closed-loop step judged for stability runs measured windows (trials) back to back; at the end of each the
shape looks at the last 3 and ends the step once they agree, or when the trials run out (UNSTABLE).
A shape may choose its steps as it goes (the ``slo`` search): :meth:`StepShape.next_plan` sees the results of
the steps before.

In a distributed run the shape runs on the master; each step it opens (or interrupts, or ends after its
trials) is announced to the workers, which record into steps of their own with the same index; the master
asks for their reports whenever it needs merged results (``results``)."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gevent.event
from locust import LoadTestShape, events
from locust.runners import MasterRunner, WorkerRunner

from ipsbench.loadgen.distributed import WorkerSteps, announce_end_after_trials, announce_interrupt, announce_step
from ipsbench.loadgen.recorder import RunRecorder, StepRecord
from ipsbench.loadgen.scrape import SCRAPE_LEAD_S, StepScrapes
from ipsbench.loadgen.senders import DRAIN_PERIOD_S
from ipsbench.loadgen.stability import is_stable
from ipsbench.loadgen.trials import STABLE_WINDOWS

logger = logging.getLogger(__name__)

DRAIN_GRACE_S = 2.0
"""How long past the drain bound a step waits for locust to report its users gone."""
RECORD_LAG_S = 2 * DRAIN_PERIOD_S
"""How long after a trial's end its figures are read: users record their sender threads' outcomes in batches."""
SCRAPE_POLL_S = 0.05
"""How often a step's scraper looks whether its window has ended (an interrupt ends it early)."""


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
    phase: str | None = None


class StepShape(LoadTestShape):
    """A load shape made of steps; users ask :meth:`admit` for the step to issue into before each request.

    ``tick()`` (called by locust about once a second) opens a step with its users, closes it when its window
    ends, returns 0 users until the step's users have left (bounded by ``drain_s``), then opens the next step;
    after the last step it sets ``finished`` and returns None, which stops the test (or, with ``hold_at_end``,
    keeps 0 users so that whoever drives the run can collect the workers' final reports before stopping it).
    """

    abstract = True
    warmup_s: float = 2.0
    """Each step's warm-up: requests are issued and counted, but not measured."""
    window_s: float = 10.0
    """Each step's measured window, after its warm-up."""
    drain_s: float = 10.0
    """Bound on waiting for in-flight requests after a step; locust's ``stop_timeout`` should match it."""
    hold_at_end: bool = False
    scrapes: StepScrapes | None = None
    """Where set, the server's metrics are scraped at each step's window start and end (only the process that
    owns the steps, the master of a distributed run, has one)."""
    results: Callable[[StepRecord], StepRecord] | None = None
    """The step with every process's requests in it (a distributed run's master merges its workers' reports);
    None: this process's own record is the whole step."""

    def __init__(
        self,
        recorder: RunRecorder | None = None,
        drain_s: float | None = None,
        warmup_s: float | None = None,
        window_s: float | None = None,
    ) -> None:
        """Arguments left None keep the class attributes (a locustfile's subclass sets those instead)."""
        super().__init__()
        self.recorder = recorder or RunRecorder()
        for name, value in (("drain_s", drain_s), ("warmup_s", warmup_s), ("window_s", window_s)):
            if value is not None:
                setattr(self, name, value)
        self._plans = list(self.plan())
        self._next_plan = 0
        self._draining_since_ns: int | None = None
        self._stopping = False
        self.finished = gevent.event.Event()
        self._scrapers: list[gevent.Greenlet] = []
        self._judges: list[gevent.Greenlet] = []
        self.step_count = 0

    @abstractmethod
    def plan(self) -> Sequence[StepPlan]:
        """The steps, in order."""

    @property
    def planned_steps(self) -> list[StepPlan]:
        return list(self._plans)

    @property
    def planned_step_count(self) -> int:
        """Steps planned (an upper bound for a shape that chooses as it goes)."""
        return len(self._plans)

    def next_plan(self) -> StepPlan | None:
        """The next step to run, or None when the scenario is over; called once the previous step drained."""
        if self._next_plan >= len(self._plans):
            return None
        self._next_plan += 1
        return self._plans[self._next_plan - 1]

    def merged(self, step: StepRecord) -> StepRecord:
        """``step`` with every process's requests in it."""
        return self.results(step) if self.results is not None else step

    def admit(self, now_ns: int) -> StepRecord | None:
        """The step a request issued now belongs to, or None when nothing may be issued."""
        step = self.recorder.current
        if step is not None and step.issuing(now_ns):
            return step
        return None

    def interrupt(self) -> None:
        """Stop issuing at once and run no further step (Ctrl-C, SIGTERM)."""
        self._stopping = True
        if self.recorder.current is not None:  # its users still leave through tick(), within the drain bound
            self._draining_since_ns = self.recorder.now_ns()
        self.recorder.interrupt()
        if isinstance(self.runner, MasterRunner):
            announce_interrupt(self.runner)

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
        plan = None if self._stopping else self.next_plan()
        if plan is None or self._stopping:
            self.finished.set()
            return (0, _spawn_rate(0)) if self.hold_at_end else None
        self.step_count += 1
        users = plan.users or self._processes()
        load = f"{users} users" if plan.rate_per_s is None else f"{plan.rate_per_s:g} requests/s ({users} senders)"
        windows = f"{plan.window_s:g} s measured" if plan.trials_max <= 1 else (
            f"{plan.window_s:g} s windows until 3 agree within {plan.tolerance:.0%} (at most {plan.trials_max})"
        )
        logger.info(
            "step %d/%d: %s, %g s warm-up, %s", self.step_count, self.planned_step_count, load, plan.warmup_s, windows,
        )
        step = self.recorder.open_step(
            users, plan.warmup_s, plan.window_s, plan.rate_per_s, trials_max=plan.trials_max, phase=plan.phase
        )
        if isinstance(self.runner, MasterRunner):
            announce_step(self.runner, step)
        if self.scrapes is not None:
            self._scrapers.append(gevent.spawn(self._scrape_window, step))
        if plan.trials_max > 1:
            self._judges.append(gevent.spawn(self._judge_trials, step, plan.tolerance))
        return users, _spawn_rate(users)

    def _judge_trials(self, step: StepRecord, tolerance: float) -> None:
        """At the end of each trial: end the step once its last 3 windows agree, or after the last trial."""
        trial_ns = round(step.window_s * 1e9)
        for trials in range(1, step.trials_max + 1):
            boundary_ns = step.window_start_ns + trials * trial_ns
            while (wait_ns := boundary_ns - self.recorder.now_ns()) > 0:
                if step.interrupted:
                    return
                gevent.sleep(min(wait_ns / 1e9, SCRAPE_POLL_S))
            if step.interrupted:
                return
            if trials < STABLE_WINDOWS and trials < step.trials_max:
                continue
            gevent.sleep(RECORD_LAG_S)  # the window's last outcomes reach the recorder up to a drain period late
            merged = self.merged(step)
            windows = [merged.trial_figures(number) for number in range(trials)]
            stable = is_stable(windows, tolerance)
            if stable or trials == step.trials_max:
                logger.info("step %d %s after %d windows", step.index + 1, "stable" if stable else "UNSTABLE", trials)
                step.end_after_trials(trials, stable)
                if isinstance(self.runner, MasterRunner):
                    announce_end_after_trials(self.runner, step)
                return

    def wait_scrapes(self, timeout_s: float) -> None:
        """Wait (bounded) for the steps' metric scrapes still running; those left are stopped."""
        gevent.joinall(self._scrapers, timeout=timeout_s)
        gevent.killall([*self._scrapers, *self._judges], block=False)

    def _scrape_window(self, step: StepRecord) -> None:
        lead_ns = round(min(SCRAPE_LEAD_S, step.warmup_s) * 1e9)
        gevent.sleep(max(step.window_start_ns - lead_ns - self.recorder.now_ns(), 0) / 1e9)
        if step.window_end_ns <= step.window_start_ns:  # interrupted before its window
            return
        self.scrapes.window_start(step.index)
        while (left_ns := step.window_end_ns - self.recorder.now_ns()) > 0:  # an interrupt moves the end earlier
            gevent.sleep(min(left_ns / 1e9, SCRAPE_POLL_S))
        self.scrapes.window_end(step.index, step.window_start_ns, step.window_end_ns)

    def _users_left(self) -> int:
        return self.runner.user_count if self.runner is not None else 0

    def _processes(self) -> int:
        """Locust processes that run users: the connected workers, or this process."""
        if isinstance(self.runner, MasterRunner):
            return max(self.runner.worker_count, 1)
        return 1


def _spawn_rate(users: int) -> float:
    """Start or stop all of a step's users in one go."""
    return float(max(users, 1))


@events.init.add_listener
def _follow_the_master(environment, runner=None, **_) -> None:
    """Plain ``locust -f`` with workers: a step shape on a worker records the steps its master announces (and
    reports them in its worker reports), so its users know which step they issue into."""
    if isinstance(runner, WorkerRunner) and isinstance(environment.shape_class, StepShape):
        WorkerSteps(runner, environment.shape_class.recorder)
