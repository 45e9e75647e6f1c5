"""Service-level objectives: parsing ``p99=100ms``, judging a step against them, and the ``slo`` search.

A percentile is claimed only from enough samples, by one of two rules (``--sample-rule``): ``min-samples``,
100 / (1 - p) samples (e.g. 10,000 for p99, so that about 100 lie beyond it), the measured percentile then
compared with the target (missed sooner once more samples exceed the target than those 100: no later samples could
bring it back); or ``early-stopping``, the binomial test behind MLPerf LoadGen's early stopping: with
n samples of which h exceed the target, the objective is met once P[Binomial(n, 1 - p) <= h] <= 1 % (so few
misses are improbable if the tail were as large as allowed) and missed once P[Binomial(n, 1 - p) >= h] <= 1 %,
so a step far from its target is settled from a few hundred samples and one near it needs more. Short of that,
the objective counts as not met and says why. The search brackets the answer between ``low`` and ``high`` and
bisects, within a bounded number of steps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from ipsbench.loadgen.censoring import scheduled_percentile
from ipsbench.loadgen.histograms import count_above
from ipsbench.loadgen.outcomes import Outcome
from ipsbench.server.durations import parse_duration_s

_OBJECTIVE = re.compile(r"^\s*p(\d{1,2}(?:\.\d+)?)\s*=\s*(.+?)\s*$")
ERROR_RATE = "error_rate"
DEFAULT_PERCENTILE = 99.0
"""The percentile of an objective written as a bare duration, unless ``--percentile`` says otherwise."""


def min_samples(percentile: float) -> int:
    """Samples needed before a percentile is claimed: 100 / (1 - p), e.g. 10,000 for p99."""
    return math.ceil(round(100 / (1 - percentile / 100), 6))


MIN_SAMPLES = "min-samples"
EARLY_STOPPING = "early-stopping"
SAMPLE_RULES = (MIN_SAMPLES, EARLY_STOPPING)
EARLY_STOPPING_CONFIDENCE = 0.99
"""The confidence at which the early-stopping rule calls an objective met or missed."""
EXACT_BINOMIAL_TERMS = 2_000_000
"""Past this many terms the binomial tail is taken from its normal approximation (bounding the work)."""


def binomial_cdf(k: int, n: int, q: float) -> float:
    """P[X <= k] for X ~ Binomial(n, q), summed in log space (no underflow at millions of samples)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if k > EXACT_BINOMIAL_TERMS:
        sigma = math.sqrt(n * q * (1 - q))
        return 0.5 * math.erfc(-(k + 0.5 - n * q) / (sigma * math.sqrt(2)))
    i = np.arange(k, dtype=np.float64)
    # log pmf(0) = n log(1 - q); pmf(i + 1) / pmf(i) = (n - i) / (i + 1) * q / (1 - q)
    steps = np.log(n - i) - np.log(i + 1) + math.log(q) - math.log1p(-q)
    log_terms = n * math.log1p(-q) + np.concatenate(([0.0], np.cumsum(steps)))
    top = float(log_terms.max())
    return min(1.0, math.exp(top) * float(np.exp(log_terms - top).sum()))


def early_stopping_decision(samples: int, over: int, percentile: float) -> bool | None:
    """Whether ``samples`` of which ``over`` exceed the target settle ``percentile`` <= target: True (met), False
    (missed), None (not yet, at :data:`EARLY_STOPPING_CONFIDENCE`)."""
    if samples <= 0:
        return None
    tail = 1 - percentile / 100
    alpha = 1 - EARLY_STOPPING_CONFIDENCE
    if binomial_cdf(over, samples, tail) <= alpha:
        return True
    if 1 - binomial_cdf(over - 1, samples, tail) <= alpha:
        return False
    return None


def early_stopping_min_samples(percentile: float) -> int:
    """The fewest samples that can settle ``percentile`` as met: all of them within the target."""
    return math.ceil(math.log(1 - EARLY_STOPPING_CONFIDENCE) / math.log(percentile / 100))


def samples_to_settle(judged: dict, percentile: float) -> float:
    """About how many samples settle an early-stopping objective (``judged``: its entry from :func:`judge`), at
    the share over its target seen so far: the normal approximation of the binomial test; unbounded when that
    share is the allowed tail itself."""
    tail = 1 - percentile / 100
    seen = judged["over_target"] / judged["samples"] if judged["samples"] else 0.0
    if seen == 0:
        return early_stopping_min_samples(percentile)
    if seen == tail:
        return math.inf
    z = NormalDist().inv_cdf(EARLY_STOPPING_CONFIDENCE)
    return z ** 2 * tail * (1 - tail) / (seen - tail) ** 2


def samples_needed(percentile: float, rule: str) -> int:
    """The samples a step needs to claim ``percentile`` under ``rule`` (early stopping: the fewest that can)."""
    return early_stopping_min_samples(percentile) if rule == EARLY_STOPPING else min_samples(percentile)


POISSON_MARGIN_SIGMAS = 3
"""Arrivals in a window vary (Poisson: by about √n), so a step is planned to expect the samples needed plus 3 σ."""


def samples_to_expect(needed: int) -> int:
    """The expected sample count at which a step holds ``needed`` with Poisson arrivals (99.9 % of the time)."""
    return math.ceil(needed + POISSON_MARGIN_SIGMAS * math.sqrt(needed))


def duration_to_hold(needed: int, samples_per_duration_s: float) -> int:
    """The ``--duration`` (whole seconds) at which a step holds ``needed`` samples, given the samples each second
    of ``--duration`` brings (the rate, times the windows the step is judged on)."""
    return math.ceil(samples_to_expect(needed) / samples_per_duration_s)


@dataclass(frozen=True)
class LatencyObjective:
    """``name`` (e.g. p99) of successful requests' latency at most ``target_us``."""

    name: str
    percentile: float
    target: str
    target_us: int


def with_percentile(text: str, percentile: float) -> str:
    """``15ms`` → ``p99=15ms`` at ``percentile`` (perf_analyzer's ``--percentile``); ``p95=15ms`` stays itself."""
    if "=" in text:
        return text.strip()
    number = f"{percentile:.6f}".rstrip("0").rstrip(".")
    return f"p{number}={text.strip()}"


def parse_objective(text: str) -> LatencyObjective:
    """``p99=100ms`` → an objective; ValueError with the accepted form otherwise."""
    match = _OBJECTIVE.match(text)
    if match is None:
        raise ValueError(f"invalid latency objective {text!r}: use PERCENTILE=DURATION, e.g. p99=100ms")
    percentile = float(match[1])
    if not 0 < percentile < 100:
        raise ValueError(f"percentile must be in (0, 100), got {percentile:g} in {text!r}")
    target_s = parse_duration_s(match[2])
    if target_s <= 0:
        raise ValueError(f"latency target must be positive in {text!r}")
    return LatencyObjective(f"p{match[1]}", percentile, match[2], round(target_s * 1e6))


def judge(
    objectives: list[LatencyObjective], histogram, error_rate: float, issued: int, max_error_rate: float,
    censored=None, rule: str = MIN_SAMPLES,
) -> list[dict]:
    """Each objective with its measured value and whether it is met; ``histogram``: the step's successful
    requests' latencies (HDR, microseconds) in the measured window; ``censored`` (open loop): the lower bounds of
    the window's arrivals never sent or never answered, counted as misses (:mod:`ipsbench.loadgen.censoring`). A
    percentile that falls among those is a lower bound, and not met: the step did not answer it in time.
    ``rule``: when the samples are enough to judge (see the module's docstring)."""
    unanswered = censored.get_total_count() if censored is not None else 0
    samples = histogram.get_total_count() + unanswered
    judged = []
    for objective in objectives:
        measured_us, lower_bound = (
            scheduled_percentile(histogram, censored, objective.percentile) if unanswered
            else (histogram.get_value_at_percentile(objective.percentile) if samples else None, False)
        )
        entry = {
            "name": objective.name, "target": objective.target, "target_us": objective.target_us,
            "measured_us": measured_us, "lower_bound": lower_bound, "rule": rule,
            "samples": samples, "samples_needed": samples_needed(objective.percentile, rule), "why": None,
        }
        if rule == EARLY_STOPPING:
            over = count_above(histogram, objective.target_us) + unanswered
            decision = early_stopping_decision(samples, over, objective.percentile)
            entry.update(over_target=over, enough_samples=decision is not None, met=decision is True)
            if decision is None:
                entry["why"] = (f"{samples} samples, {over} over {objective.target}: too few to settle "
                                f"{objective.name} at {EARLY_STOPPING_CONFIDENCE:.0%} confidence")
            elif not decision:
                entry["why"] = (f"{objective.name} above {objective.target}: {over} of {samples} samples over it "
                                f"(at {EARLY_STOPPING_CONFIDENCE:.0%} confidence)")
            judged.append(entry)
            continue
        needed = entry["samples_needed"]
        # more samples over the target than the percentile allows of the samples it needs: missed, however many
        # more came (all of them within it)
        over = count_above(histogram, objective.target_us) + unanswered if samples < needed else 0
        missed_already = over > (1 - objective.percentile / 100) * needed
        enough = samples >= needed or missed_already
        entry.update(enough_samples=enough,
                     met=samples >= needed and measured_us is not None and not lower_bound
                     and measured_us <= objective.target_us)
        if missed_already:
            entry["why"] = (f"{objective.name} above {objective.target}: {over} of {samples} samples over it, more "
                            f"than the {math.floor((1 - objective.percentile / 100) * needed)} of {needed:,} "
                            f"{objective.name} allows")
        elif not enough:
            entry["why"] = f"{samples} samples, {entry['samples_needed']} needed to claim {objective.name}"
        elif lower_bound:
            entry["why"] = (f"{objective.name} at least {measured_us / 1000:g} ms: it falls among the {unanswered} "
                            "arrivals never sent or never answered in the window")
        elif not entry["met"]:
            entry["why"] = f"{objective.name} {measured_us / 1000:g} ms above {objective.target}"
        judged.append(entry)
    met = error_rate <= max_error_rate
    judged.append({
        "name": ERROR_RATE, "target": max_error_rate, "target_us": None, "measured": error_rate,
        "measured_us": None, "lower_bound": False, "rule": None, "met": met, "samples": issued, "enough_samples": True, "samples_needed": 0,
        "why": None if met else f"error rate {error_rate:.2%} above {max_error_rate:.2%}",
    })
    return judged


def judge_step(step, objectives, error_rate: float, max_error_rate: float, rule: str = MIN_SAMPLES) -> list[dict]:
    """:func:`judge` on a step's record: its successes' latency and, open loop, its arrivals never sent or never
    answered (``step.censored_latencies()``)."""
    censored = step.censored_latencies() if step.open_loop else None
    return judge(list(objectives), step.histograms[Outcome.OK], error_rate, step.issued, max_error_rate, censored,
                 rule)


def worst(per_step: list[list[dict]]) -> list[dict]:
    """Per objective, the step that meets it least (a run passes only when every step passes)."""
    if not per_step:
        return []
    worst_entries = []
    for position in range(len(per_step[0])):
        candidates = [objectives[position] for objectives in per_step]
        failing = [entry for entry in candidates if not entry["met"]]
        pool = failing or candidates
        worst_entries.append(max(pool, key=lambda e: e["measured_us"] or e.get("measured") or 0))
    return worst_entries


@dataclass
class Search:
    """Bracketing and bisection for the highest value (rate or concurrency) that meets every objective.

    The lower end is tried first (failing: nothing in the bracket meets the SLO), then the upper end (meeting:
    the answer may lie above the bracket), then the midpoint of the remaining bracket, until it is narrower
    than ``resolution`` × its lower end (one user for concurrency) or ``max_steps`` steps have run.
    """

    kind: str
    low: float
    high: float
    max_steps: int
    resolution: float = 0.05
    steps: list[dict] = field(default_factory=list)
    best: float | None = None
    stopped_because: str = ""
    _passing: float | None = None
    _failing: float | None = None

    def next_value(self) -> float | None:
        """The value to measure next, or None when the search is over (``stopped_because`` says why)."""
        if self.stopped_because:
            return None
        if len(self.steps) >= self.max_steps:
            self.stopped_because = f"{self.max_steps} steps run"
            return None
        if not self.steps:
            return self.low
        if self._passing is None:
            self.stopped_because = "the lower end does not meet the objectives"
            return None
        if self._failing is None:
            if self._passing == self.high:
                self.stopped_because = "the upper end meets the objectives: the answer may lie above the bracket"
                return None
            return self.high
        if self._narrow():
            self.stopped_because = "bracket narrower than the resolution"
            return None
        middle = (self._passing + self._failing) / 2
        return float(math.floor(middle)) if self.kind == "concurrency" else round(middle, 3)

    def record(self, value: float, met: bool, step_index: int, why: list[str]) -> None:
        self.steps.append({"value": value, "met": met, "step": step_index, "why": why})
        if met and (self._passing is None or value > self._passing):
            self._passing = value
            self.best = value
        elif not met and (self._failing is None or value < self._failing):
            self._failing = value

    def _narrow(self) -> bool:
        width = self._failing - self._passing
        if self.kind == "concurrency":
            return width <= 1
        return width <= self.resolution * self._passing

    def describe(self) -> dict:
        return {
            "kind": self.kind, "bracket": [self.low, self.high], "best": self.best,
            "bracket_found": [self._passing, self._failing], "steps": list(self.steps),
            "stopped_because": self.stopped_because,
        }
