"""What follows each step of a run on the gevent side, listening to its shape's events: the stability judge, which
ends a closed-loop step once its last 3 windows agree; the sample keeper, which grows a step's window until it holds
the samples its objectives need; and the scraper, which reads the server's metrics at each window's start and
end."""

from __future__ import annotations

import logging

import gevent

from ipsbench.loadgen.outcomes import ERRORS, Outcome
from ipsbench.loadgen.recorder import StepRecord
from ipsbench.loadgen.scrape import SCRAPE_LEAD_S, StepScrapes
from ipsbench.loadgen.senders import DRAIN_PERIOD_S
from ipsbench.loadgen.slo import (
    EARLY_STOPPING,
    LatencyObjective,
    judge_step,
    samples_needed,
    samples_to_expect,
    samples_to_settle,
)
from ipsbench.loadgen.stability import is_stable
from ipsbench.loadgen.trials import STABLE_WINDOWS

logger = logging.getLogger(__name__)

RECORD_LAG_S = 2 * DRAIN_PERIOD_S
"""How long after a trial's end its figures are read: users record their sender threads' outcomes in batches."""
POLL_S = 0.05
OPEN_LOOP_LAG_MAX_S = 2.0
"""Bound on waiting, after an open-loop window, for the answers to its last arrivals (their service time's p99)."""
COUNT_POLL_S = 0.2
"""How often a count-window judge counts its step's completed requests."""
MERGED_POLL_S = 2.0
"""How often a watcher that polls reads a distributed step: each read asks every worker for a report (and the
workers are the load generators, whose CPU it costs)."""


def poll_interval_s(shape, local_s: float) -> float:
    """``local_s``, or :data:`MERGED_POLL_S` where reading the step means asking every worker for it."""
    return local_s if shape.results is None else max(local_s, MERGED_POLL_S)
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
            self._greenlets.append(gevent.spawn(self._judge, step, plan.tolerance, plan.stability_metrics))

    def _judge(self, step: StepRecord, tolerance: float, metrics) -> None:
        clock = self.shape.recorder.now_ns
        trial_ns = round(step.window_s * 1e9)
        for trials in range(1, step.trials_max + 1):
            if step.window_requests:
                while not self._counted_in(step, trials):
                    if step.interrupted:
                        return
                    gevent.sleep(poll_interval_s(self.shape, COUNT_POLL_S))
            boundary_ns = step.window_start_ns + trials * trial_ns
            while not step.window_requests and (wait_ns := boundary_ns - clock()) > 0:
                if step.interrupted:
                    return
                gevent.sleep(min(wait_ns / 1e9, POLL_S))
            if step.interrupted:
                return
            if trials < STABLE_WINDOWS and trials < step.trials_max:
                continue
            gevent.sleep(RECORD_LAG_S)  # the window's last outcomes reach the recorder up to a drain period late
            if step.open_loop:  # arrivals due late in the window are answered after it: wait for most of them
                service = self.shape.merged(step).service_histogram
                if service.get_total_count():
                    gevent.sleep(min(service.get_value_at_percentile(99.0) / 1e6, OPEN_LOOP_LAG_MAX_S))
            merged = self.shape.merged(step)
            windows = [merged.trial_figures(number) for number in range(trials)]
            stable = is_stable(windows, tolerance, metrics)
            if stable or trials == step.trials_max:
                logger.info("step %d %s after %d windows", step.index + 1, "stable" if stable else "UNSTABLE", trials)
                self.shape.end_after_trials(step, trials, stable)
                return

    def _counted_in(self, step: StepRecord, trials: int) -> bool:
        """Count windows: the first ``trials`` windows are complete (a later one began, the last one holds its
        requests), or the step's time ran out."""
        if self.shape.recorder.now_ns() >= step.window_end_ns:
            return True
        merged = self.shape.merged(step)
        if len(merged.trials) > trials:
            return True
        return len(merged.trials) == trials and sum(merged.trial(trials - 1).counts.values()) >= step.window_requests

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=False)


GROW_LEAD_S = 1.0
"""A step's window is grown this long (at most a quarter of it) before it would end, so every worker hears of it
in time."""
GROW_MARGIN = 1.1
"""A window grown to hold a sample count is planned 10 % longer than the rate so far says it needs."""


SETTLE_CHECK_S = 1.0
"""How often a grown window looks whether its objectives are settled (and ends if so)."""
EARLY_STOPPING_GROWTH = 1.5
"""An unsettled early-stopping step grows its window at least this much at a time."""
def samples_so_far(step: StepRecord) -> int:
    """What a step holds to judge a percentile on: its successes in the window, and (open loop) the window's
    arrivals counted as misses."""
    return step.histograms[Outcome.OK].get_total_count() + step.censored_offsets.get_total_count()


class SampleKeeper:
    """Grows each step's measured window past ``--duration`` until it holds the samples its objectives need under
    the sample rule, up to ``longest_window_s``, and ends a grown window as soon as every objective is settled
    (met, or missed: once more samples exceed a target than its percentile allows, no more can bring it back). A
    window is grown when, shortly before its end, its objectives are not settled: ``min-samples`` by the rate so far
    to the samples needed (not at all when even the longest window could not hold them: that step is INCONCLUSIVE
    as planned), ``early-stopping`` to the samples the share over the target so far says would settle it. Steps
    judged for stability over several windows keep their windows."""

    def __init__(self, shape, objectives: list[LatencyObjective], rule: str, longest_window_s: float,
                 max_error_rate: float) -> None:
        self.shape = shape
        self.objectives, self.rule = objectives, rule
        self.longest_window_s, self.max_error_rate = longest_window_s, max_error_rate
        self._greenlets: list[gevent.Greenlet] = []
        if objectives:
            shape.events.opened.add_listener(self._on_opened)

    def _on_opened(self, step: StepRecord, **_) -> None:
        if step.trials_max == 1 and self.longest_window_s > step.window_s:
            self._greenlets.append(gevent.spawn(self._keep, step))

    def _keep(self, step: StepRecord) -> None:
        clock = self.shape.recorder.now_ns
        planned_end_ns = step.window_end_ns
        lead_ns = round(min(GROW_LEAD_S, step.window_s / 4) * 1e9)
        while not step.interrupted and (now_ns := clock()) < step.window_end_ns:
            grown = step.window_end_ns > planned_end_ns
            decide_ns = step.window_end_ns - lead_ns
            if grown or now_ns >= decide_ns:
                merged = self.shape.merged(step)
                judged = self._judged(merged)
                elapsed_s = (now_ns - step.window_start_ns) / 1e9
                if all(entry["enough_samples"] for entry in judged[:-1]) or self._errors_settle(merged, now_ns):
                    if grown and self.shape.resize_window(step, elapsed_s):
                        logger.info("step %d: its objectives settled after %.1f s measured", step.index + 1,
                                    elapsed_s)
                    return
                if now_ns >= decide_ns:
                    samples = samples_so_far(merged)
                    grown_s = self._grown_window_s(judged, samples, samples / elapsed_s, elapsed_s) if samples else None
                    if grown_s is not None and grown_s > step.measured_window_s \
                            and self.shape.resize_window(step, grown_s):
                        logger.info("step %d: measured window grown to %.0f s to hold the samples its objectives "
                                    "need (%s)", step.index + 1, grown_s, self.rule)
                        continue
                    if not grown:
                        return  # not grown, and growing would not hold them: the window stays as planned
            wait_ns = max(decide_ns - now_ns, 0) if not grown else 0
            check_s = poll_interval_s(self.shape, SETTLE_CHECK_S)
            gevent.sleep(min(wait_ns / 1e9, check_s) if wait_ns else check_s)

    def _errors_settle(self, step: StepRecord, now_ns: int) -> bool:
        """The step's errors already exceed its error bound, however many requests the longest window would add
        (a dead or refusing server): measuring longer could not change its verdict."""
        errors = sum(step.counts[outcome] for outcome in ERRORS)
        elapsed_s = (now_ns - step.start_ns) / 1e9
        if not errors or elapsed_s <= 0:
            return False
        left_s = max(self.longest_window_s - (now_ns - step.window_start_ns) / 1e9, 0.0)
        most_issued = step.issued + step.issued / elapsed_s * left_s
        return errors > self.max_error_rate * most_issued

    def _judged(self, step: StepRecord) -> list[dict]:
        return judge_step(step, self.objectives, 0.0, 1.0, self.rule)

    def _grown_window_s(self, judged: list[dict], samples: int, rate_per_s: float, elapsed_s: float) -> float | None:
        """The window a step with ``judged`` objectives unsettled should grow to, or None when even the longest
        window could not hold what min-samples needs."""
        if self.rule == EARLY_STOPPING:
            needed = max(samples_to_settle(entry, objective.percentile)
                         for entry, objective in zip(judged, self.objectives) if not entry["enough_samples"])
            grown_s = elapsed_s + GROW_MARGIN * max(needed - samples, 0) / rate_per_s
            return min(max(grown_s, EARLY_STOPPING_GROWTH * elapsed_s), self.longest_window_s)
        needed = samples_to_expect(max(samples_needed(o.percentile, self.rule) for o in self.objectives))
        grown_s = elapsed_s + GROW_MARGIN * max(needed - samples, 0) / rate_per_s
        if grown_s > self.longest_window_s:
            logger.info("at %.1f samples/s even a %g s window cannot hold the %d samples its objectives need: the "
                        "step stays as it is (INCONCLUSIVE if short)", rate_per_s, self.longest_window_s, needed)
            return None
        return grown_s

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
