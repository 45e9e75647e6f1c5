"""Service-level objectives: parsing ``p99=100ms``, judging a step against them, and the ``slo`` search.

A percentile is claimed only from enough samples (``min_samples``: 100 / (1 - p), e.g. 10,000 for p99, so
that about 100 samples lie beyond it); with fewer, the objective counts as not met and says why. The search
brackets the answer between ``low`` and ``high`` and bisects, within a bounded number of steps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ipsbench.server.durations import parse_duration_s

_OBJECTIVE = re.compile(r"^\s*p(\d{1,2}(?:\.\d+)?)\s*=\s*(.+?)\s*$")
ERROR_RATE = "error_rate"
DEFAULT_PERCENTILE = 99.0
"""The percentile of an objective written as a bare duration, unless ``--percentile`` says otherwise."""


def min_samples(percentile: float) -> int:
    """Samples needed before a percentile is claimed: 100 / (1 - p), e.g. 10,000 for p99."""
    return math.ceil(round(100 / (1 - percentile / 100), 6))


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
    objectives: list[LatencyObjective], histogram, error_rate: float, issued: int, max_error_rate: float
) -> list[dict]:
    """Each objective with its measured value and whether it is met; ``histogram``: the step's successful
    requests' latencies (HDR, microseconds) in the measured window."""
    samples = histogram.get_total_count()
    judged = []
    for objective in objectives:
        needed = min_samples(objective.percentile)
        measured_us = histogram.get_value_at_percentile(objective.percentile) if samples else None
        enough = samples >= needed
        entry = {
            "name": objective.name, "target": objective.target, "target_us": objective.target_us,
            "measured_us": measured_us,
            "met": enough and measured_us is not None and measured_us <= objective.target_us,
            "samples": samples, "enough_samples": enough, "samples_needed": needed, "why": None,
        }
        if not enough:
            entry["why"] = f"{samples} samples, {needed} needed to claim {objective.name}"
        elif not entry["met"]:
            entry["why"] = f"{objective.name} {measured_us / 1000:g} ms above {objective.target}"
        judged.append(entry)
    met = error_rate <= max_error_rate
    judged.append({
        "name": ERROR_RATE, "target": max_error_rate, "target_us": None, "measured": error_rate,
        "measured_us": None, "met": met, "samples": issued, "enough_samples": True, "samples_needed": 0,
        "why": None if met else f"error rate {error_rate:.2%} above {max_error_rate:.2%}",
    })
    return judged


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
