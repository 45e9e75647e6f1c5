"""The locust load shape of every scenario: it times the steps a :class:`~ipsbench.loadgen.scenarios.base.StepPlanner`
chooses and announces them; nothing else.

A step runs N users through a warm-up and a measured window, then stops issuing and waits (bounded) for its
in-flight requests before the next step starts. Each step the shape opens, ends after its trials or interrupts is
announced on its :class:`StepEvents`; what follows steps listens there: the stability judge and the metrics scraper
(:mod:`ipsbench.loadgen.watchers`), a distributed run's master telling its workers
(:func:`ipsbench.loadgen.distributed.announce_steps`). :class:`SweepShape` and :class:`RateShape` are the same shape
set up from class attributes, for plain locustfiles.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

import gevent.event
from locust import LoadTestShape, events
from locust.event import EventHook
from locust.runners import MasterRunner, WorkerRunner

from ipsbench.loadgen.distributed import WorkerSteps, announce_steps
from ipsbench.loadgen.recorder import RunRecorder, StepRecord
from ipsbench.loadgen.scenarios.base import StepPlan, StepPlanner
from ipsbench.loadgen.scenarios.rate import rate_plans
from ipsbench.loadgen.scenarios.sweep import sweep_plans
from ipsbench.loadgen.senders import GIL_SWITCH_INTERVAL_S

logger = logging.getLogger(__name__)

DRAIN_GRACE_S = 2.0
"""How long past the drain bound a step waits for locust to report its users gone."""


class StepEvents:
    """What a step shape announces, for the listeners that follow its steps."""

    def __init__(self) -> None:
        self.opened = EventHook()
        """``step``, ``plan``: a step begins issuing now."""
        self.trials_ended = EventHook()
        """``step``: a stability-judged step ends after ``step.trials_used`` measured windows."""
        self.window_resized = EventHook()
        """``step``: a step's measured window grows to hold its objectives' samples, or ends once it holds them
        (at ``step.window_end_ns``)."""
        self.interrupted = EventHook()
        """The current step's window ends now and no further step runs (Ctrl-C, SIGTERM, the run limit)."""


class StepShape(LoadTestShape):
    """Runs ``planner``'s steps; users issue into the step ``recorder.admit`` gives them.

    ``tick()`` (called by locust about once a second) opens a step with its users, closes it when its window
    ends, returns 0 users until the step's users have left (bounded by ``drain_s``), then opens the next step;
    after the last step it sets ``finished`` and returns None, which stops the test (or, with ``hold_at_end``,
    keeps 0 users so that whoever drives the run can collect the workers' final reports before stopping it).
    """

    abstract = True
    drain_s: float = 10.0
    """Bound on waiting for in-flight requests after a step; locust's ``stop_timeout`` should match it."""
    hold_at_end: bool = False
    results: Callable[[StepRecord], StepRecord] | None = None
    """The step with every process's requests in it (a distributed run's master merges its workers' reports);
    None: this process's own record is the whole step."""

    def __init__(self, planner: StepPlanner, recorder: RunRecorder | None = None, drain_s: float | None = None) -> None:
        super().__init__()
        self.planner = planner
        self.recorder = recorder or RunRecorder()
        if drain_s is not None:
            self.drain_s = drain_s
        self.events = StepEvents()
        self._draining_since_ns: int | None = None
        self._stopping = False
        self.finished = gevent.event.Event()
        self.step_count = 0

    @property
    def planned_step_count(self) -> int:
        return self.planner.planned_step_count

    def merged(self, step: StepRecord) -> StepRecord:
        """``step`` with every process's requests in it."""
        return self.results(step) if self.results is not None else step

    def end_after_trials(self, step: StepRecord, trials: int, stable: bool) -> None:
        """A stability judge's verdict: ``step``'s measured window ends with its ``trials``-th window."""
        step.end_after_trials(trials, stable, self.recorder.now_ns())
        self.events.trials_ended.fire(step=step)

    def resize_window(self, step: StepRecord, window_s: float) -> bool:
        """A sample keeper's word: ``step``'s measured window is ``window_s`` long (False: too late, it ended)."""
        if not step.resize_window(window_s, self.recorder.now_ns()):
            return False
        self.events.window_resized.fire(step=step)
        return True

    def interrupt(self) -> None:
        """Stop issuing at once and run no further step (Ctrl-C, SIGTERM)."""
        self._stopping = True
        if self.recorder.current is not None:  # its users still leave through tick(), within the drain bound
            self._draining_since_ns = self.recorder.now_ns()
        self.recorder.interrupt()
        self.events.interrupted.fire()

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
        plan = None if self._stopping else self.planner.next_plan(self._previous_step())
        if plan is None or self._stopping:
            self.finished.set()
            return (0, _spawn_rate(0)) if self.hold_at_end else None
        return self._open(plan)

    def _previous_step(self) -> StepRecord | None:
        steps = self.recorder.steps
        return self.merged(steps[-1]).settled() if steps else None

    def _open(self, plan: StepPlan) -> tuple[int, float]:
        self.step_count += 1
        users = plan.users or self._processes()
        load = f"{users} users" if plan.rate_per_s is None else f"{plan.rate_per_s:g} requests/s ({users} senders)"
        each = f"{plan.window_requests:,}-request" if plan.window_requests else f"{plan.window_s:g} s"
        windows = f"{plan.window_s:g} s measured" if plan.trials_max <= 1 else (
            f"{each} windows until 3 agree within {plan.tolerance:.0%} on {', '.join(plan.stability_metrics)} "
            f"(at most {plan.trials_max})"
        )
        logger.info(
            "step %d/%d: %s, %g s warm-up, %s", self.step_count, self.planned_step_count, load, plan.warmup_s, windows,
        )
        step = self.recorder.open_step(
            users, plan.warmup_s, plan.window_s, plan.rate_per_s, trials_max=plan.trials_max, phase=plan.phase,
            window_requests=plan.window_requests if plan.trials_max > 1 else 0,
        )
        self.events.opened.fire(step=step, plan=plan)
        return users, _spawn_rate(users)

    def _users_left(self) -> int:
        return self.runner.user_count if self.runner is not None else 0

    def _processes(self) -> int:
        """Locust processes that run users: the connected workers, or this process."""
        if isinstance(self.runner, MasterRunner):
            return max(self.runner.worker_count, 1)
        return 1


class SweepShape(StepShape):
    """For a locustfile: closed-loop ``concurrency`` levels, each warmed up for ``warmup_s`` and measured for
    ``window_s`` (set the class attributes on a subclass)."""

    abstract = True  # for locust's picker: a locustfile runs its own subclass, not this class
    concurrency: Sequence[int] = (1, 2, 4)
    warmup_s: float = 2.0
    window_s: float = 10.0

    def __init__(self, recorder: RunRecorder | None = None) -> None:
        plans = sweep_plans(self.concurrency, self.warmup_s, self.window_s, max_trials=1, stability=0.10)
        super().__init__(StepPlanner(plans), recorder)


class RateShape(StepShape):
    """For a locustfile: open-loop ``rates_per_s``, each warmed up for ``warmup_s`` and measured for ``window_s``,
    next to a subclass of :class:`~ipsbench.loadgen.users.OpenLoopUser` (see
    :mod:`ipsbench.loadgen.scenarios.rate`)."""

    abstract = True
    rates_per_s: Sequence[float] = (10.0, 20.0)
    warmup_s: float = 2.0
    window_s: float = 10.0

    def __init__(self, recorder: RunRecorder | None = None) -> None:
        super().__init__(StepPlanner(rate_plans(self.rates_per_s, self.warmup_s, self.window_s)), recorder)


def _spawn_rate(users: int) -> float:
    """Start or stop all of a step's users in one go."""
    return float(max(users, 1))


@events.init.add_listener
def _on_locust_init(environment, runner=None, **_) -> None:
    """Plain ``locust -f``: the process hands the GIL to sender threads promptly (see
    :func:`~ipsbench.loadgen.senders.prompt_senders`; ipsbench-load's own runs do so for their duration); with
    workers, the master's step shape announces its steps, and a step shape on a worker records the steps its master
    announces (and reports them in its worker reports), so its users know which step they issue into."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    shape = environment.shape_class
    if isinstance(runner, MasterRunner) and isinstance(shape, StepShape):
        announce_steps(runner, shape.events)
    elif isinstance(runner, WorkerRunner) and isinstance(shape, StepShape):
        WorkerSteps(runner, shape.recorder)
