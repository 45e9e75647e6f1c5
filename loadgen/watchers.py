"""What follows each step of a run on the gevent side, listening to its shape's events: the stability judge, which
ends a closed-loop step once its last 3 windows agree, and the scraper, which reads the server's metrics at each
window's start and end."""

from __future__ import annotations

import logging

import gevent

from ipsbench.loadgen.recorder import StepRecord
from ipsbench.loadgen.scrape import SCRAPE_LEAD_S, StepScrapes
from ipsbench.loadgen.senders import DRAIN_PERIOD_S
from ipsbench.loadgen.stability import is_stable
from ipsbench.loadgen.trials import STABLE_WINDOWS

logger = logging.getLogger(__name__)

RECORD_LAG_S = 2 * DRAIN_PERIOD_S
"""How long after a trial's end its figures are read: users record their sender threads' outcomes in batches."""
POLL_S = 0.05
"""How often a watcher looks whether its step's window has ended (an interrupt ends it early)."""


class StabilityJudge:
    """Ends each stability-judged step of ``shape`` after the trial at which its last 3 windows agree, or after its
    last trial (UNSTABLE)."""

    def __init__(self, shape) -> None:
        self.shape = shape
        self._greenlets: list[gevent.Greenlet] = []
        shape.events.opened.add_listener(self._on_opened)

    def _on_opened(self, step: StepRecord, plan, **_) -> None:
        if plan.trials_max > 1:
            self._greenlets.append(gevent.spawn(self._judge, step, plan.tolerance))

    def _judge(self, step: StepRecord, tolerance: float) -> None:
        clock = self.shape.recorder.now_ns
        trial_ns = round(step.window_s * 1e9)
        for trials in range(1, step.trials_max + 1):
            boundary_ns = step.window_start_ns + trials * trial_ns
            while (wait_ns := boundary_ns - clock()) > 0:
                if step.interrupted:
                    return
                gevent.sleep(min(wait_ns / 1e9, POLL_S))
            if step.interrupted:
                return
            if trials < STABLE_WINDOWS and trials < step.trials_max:
                continue
            gevent.sleep(RECORD_LAG_S)  # the window's last outcomes reach the recorder up to a drain period late
            merged = self.shape.merged(step)
            windows = [merged.trial_figures(number) for number in range(trials)]
            stable = is_stable(windows, tolerance)
            if stable or trials == step.trials_max:
                logger.info("step %d %s after %d windows", step.index + 1, "stable" if stable else "UNSTABLE", trials)
                self.shape.end_after_trials(step, trials, stable)
                return

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=False)


class WindowScraper:
    """Scrapes the server's metrics just before each step's measured window opens and when it ends, into
    ``scrapes``."""

    def __init__(self, shape, scrapes: StepScrapes) -> None:
        self.shape = shape
        self.scrapes = scrapes
        self._greenlets: list[gevent.Greenlet] = []
        shape.events.opened.add_listener(lambda step, **_: self._greenlets.append(gevent.spawn(self._scrape, step)))

    def _scrape(self, step: StepRecord) -> None:
        clock = self.shape.recorder.now_ns
        lead_ns = round(min(SCRAPE_LEAD_S, step.warmup_s) * 1e9)
        gevent.sleep(max(step.window_start_ns - lead_ns - clock(), 0) / 1e9)
        if step.window_end_ns <= step.window_start_ns:  # interrupted before its window
            return
        self.scrapes.window_start(step.index)
        while (left_ns := step.window_end_ns - clock()) > 0:  # an interrupt moves the end earlier
            gevent.sleep(min(left_ns / 1e9, POLL_S))
        self.scrapes.window_end(step.index, step.window_start_ns, step.window_end_ns)

    def wait(self, timeout_s: float) -> None:
        """Wait (bounded) for the scrapes still running; those left are stopped."""
        gevent.joinall(self._greenlets, timeout=timeout_s)
        gevent.killall(self._greenlets, block=False)
