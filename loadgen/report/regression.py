"""``compare --fail-on``: a regression gate that decides with the noise of both runs.

``--fail-on "images_per_s<-5%,p99>+10%"`` names, per clause, a figure, the direction that is bad (``<``: a fall,
``>``: a rise) and a threshold: relative (``%``), absolute for latency (``ms``, ``us``, ``s``) or, for the error
rate, in percentage points (``pp``). Each step both runs ran (matched as compare matches them) is judged on every
clause from the confidence interval of the change (:mod:`ipsbench.loadgen.report.bootstrap`):

- REGRESSION: the whole interval is past the threshold in the bad direction;
- WITHIN-NOISE: the interval straddles the threshold: the runs' noise cannot tell whether it was crossed;
- PASS: the whole interval is on the allowed side of the threshold;
- IMPROVEMENT: the whole interval is past the threshold mirrored to the good side (``p99>+10%``: p99 fell by more
  than 10 %; a threshold of 0 makes it any change in the good direction);
- UNJUDGED: the reports lack what the figure needs (a histogram, 2 windows per run, samples enough for the
  percentile, a non-zero base for a relative change); the reason is given.

A step's verdict is its worst clause's (REGRESSION, UNJUDGED, WITHIN-NOISE, PASS, IMPROVEMENT, in that order; a
step improves only if every clause does). The run's verdict: REGRESSION (exit 1) when any step regressed; else
UNJUDGED (exit 2) when a clause could not be judged, since a gate must not pass on what it did not measure; else the
worst of the steps' verdicts (exit 0).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ipsbench.loadgen.report.bootstrap import (
    FigureUnavailable,
    Interval,
    RecordedValues,
    Resampler,
    absolute,
    decode_latency_histogram,
    latency_interval,
    rate_interval,
    recorded_values,
    relative,
    window_interval,
)
from ipsbench.loadgen.report.cells import DASH
from ipsbench.loadgen.report.schema import PERCENTILES, step_load
from ipsbench.loadgen.slo import min_samples
from ipsbench.loadgen.trials import STABLE_WINDOWS

REGRESSION, UNJUDGED, WITHIN_NOISE, PASS, IMPROVEMENT = "REGRESSION", "UNJUDGED", "WITHIN-NOISE", "PASS", "IMPROVEMENT"
VERDICT_ORDER = (REGRESSION, UNJUDGED, WITHIN_NOISE, PASS, IMPROVEMENT)
"""Worst first."""
EXIT_CODES = {REGRESSION: 1, UNJUDGED: 2, WITHIN_NOISE: 0, PASS: 0, IMPROVEMENT: 0}

THROUGHPUT_METRICS = ("images_per_s", "requests_per_s")
LATENCY_METRICS = (*(name for name, _ in PERCENTILES), "mean")
ERROR_METRIC = "error_rate"
METRICS = (*THROUGHPUT_METRICS, *LATENCY_METRICS, ERROR_METRIC)
UNITS = {**{name: ("%",) for name in THROUGHPUT_METRICS}, **{name: ("%", "ms", "us", "s") for name in LATENCY_METRICS},
         ERROR_METRIC: ("pp",)}
US_PER_UNIT = {"us": 1.0, "ms": 1_000.0, "s": 1_000_000.0}
MAX_FAIL_ON_CHARS = 1_000
MAX_CLAUSES = 32
MAX_THRESHOLD = {"%": 1_000.0, "pp": 100.0, "us": 60e6, "ms": 60e3, "s": 60.0}
QUOTED_CHARS = 60
"""How much of a bad clause an error message repeats."""
CLAUSE = re.compile(r"(?P<metric>[A-Za-z0-9_.]+)\s*(?P<op>[<>])\s*(?P<sign>[+-]?)\s*"
                    r"(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>%|ms|us|s|pp)?")


class FailOnError(ValueError):
    """A ``--fail-on`` that cannot be parsed; the message names the clause and what is wrong with it."""


@dataclass(frozen=True)
class Clause:
    """``metric`` changing past ``threshold`` (signed: negative for ``<``) in ``unit`` is a regression."""

    text: str
    metric: str
    op: str
    threshold: float
    unit: str

    @property
    def rises_are_bad(self) -> bool:
        return self.op == ">"

    @property
    def relative(self) -> bool:
        return self.unit == "%"

    def shown(self, value: float) -> str:
        """A change (a fraction, microseconds or a rate difference) in the clause's unit."""
        if self.unit == "%":
            return f"{value * 100:+.1f}%"
        if self.unit == "pp":
            return f"{value * 100:+.2f} pp"
        return f"{value / US_PER_UNIT[self.unit]:+.3g} {self.unit}"

    @property
    def limit(self) -> float:
        """The threshold in the unit changes are computed in: a fraction, microseconds, or a rate difference."""
        if self.unit in ("%", "pp"):
            return self.threshold / 100
        return self.threshold * US_PER_UNIT[self.unit]


def _quoted(text: str) -> str:
    return repr(text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS] + "…")


def parse_fail_on(text: str) -> list[Clause]:
    """``--fail-on``'s clauses; :class:`FailOnError` naming the first bad one."""
    if len(text) > MAX_FAIL_ON_CHARS:
        raise FailOnError(f"--fail-on is longer than {MAX_FAIL_ON_CHARS} characters")
    parts = text.split(",")
    if len(parts) > MAX_CLAUSES:
        raise FailOnError(f"--fail-on has {len(parts)} clauses, at most {MAX_CLAUSES}")
    return [parse_clause(part.strip(), number) for number, part in enumerate(parts, 1)]


def parse_clause(text: str, number: int = 1) -> Clause:
    where = f"--fail-on clause {number} {_quoted(text)}"
    if not text:
        raise FailOnError(f"{where} is empty (clauses are separated by commas, e.g. \"p99>+10%,images_per_s<-5%\")")
    match = CLAUSE.fullmatch(text)
    if match is None:
        raise FailOnError(f"{where}: expected METRIC<-X% or METRIC>+X% (e.g. p99>+10%, images_per_s<-5%, "
                          f"p99>+2ms, error_rate>+1pp)")
    metric, op, sign, unit = match["metric"], match["op"], match["sign"], match["unit"]
    if metric not in METRICS:
        raise FailOnError(f"{where}: unknown metric {_quoted(metric)} (one of {', '.join(METRICS)})")
    if unit is None:
        raise FailOnError(f"{where}: the threshold needs a unit ({' or '.join(UNITS[metric])})")
    if unit not in UNITS[metric]:
        raise FailOnError(f"{where}: {metric} takes {' or '.join(UNITS[metric])}, not {unit}")
    if (op, sign) in ((">", "-"), ("<", "+")):
        direction = "a rise, so its threshold is +X" if op == ">" else "a fall, so its threshold is -X"
        raise FailOnError(f"{where}: {op} names {direction}")
    value = float(match["number"])
    if not math.isfinite(value) or value > MAX_THRESHOLD[unit]:
        raise FailOnError(f"{where}: the threshold is above {MAX_THRESHOLD[unit]:g}{unit}")
    return Clause(text, metric, op, value if op == ">" else -value, unit)


def clause_verdict(clause: Clause, interval: Interval) -> str:
    """Where the interval lies against the threshold (see the module's docstring)."""
    low, high, limit = interval.low, interval.high, clause.limit
    if not clause.rises_are_bad:  # mirror a fall into a rise
        low, high, limit = -high, -low, -limit
    if low > limit:
        return REGRESSION
    if high < -limit:
        return IMPROVEMENT
    if high <= limit:
        return PASS
    return WITHIN_NOISE


@dataclass(frozen=True)
class Judgement:
    """One clause on one step: the interval (None when UNJUDGED), the verdict and, if UNJUDGED, why."""

    clause: Clause
    verdict: str
    interval: Interval | None = None
    reason: str = ""


@dataclass(frozen=True)
class StepJudgement:
    load: str
    judgements: tuple[Judgement, ...]

    @property
    def verdict(self) -> str:
        return worst(j.verdict for j in self.judgements)


@dataclass(frozen=True)
class GateResult:
    steps: tuple[StepJudgement, ...]
    confidence: float
    resamples: int

    @property
    def verdict(self) -> str:
        return worst(step.verdict for step in self.steps)  # REGRESSION, the worst, when any step regressed

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


def worst(verdicts) -> str:
    return min(verdicts, key=VERDICT_ORDER.index)


class _Side:
    """What one run's step holds for the gate, its histogram decoded once."""

    def __init__(self, step: dict, run: str) -> None:
        self.step, self.run = step, run
        self._values: RecordedValues | None = None

    def latency(self) -> RecordedValues:
        if self._values is None:
            encoded = self.step.get("latency_histogram")
            if encoded is None:
                raise FigureUnavailable(f"the {self.run} report has no latency_histogram for this step (no success, "
                                        "or written by an ipsbench-load without it)")
            try:
                self._values = recorded_values(decode_latency_histogram(encoded))
            except FigureUnavailable as error:
                raise FigureUnavailable(f"the {self.run} report's {error}") from None
        return self._values

    def windows(self, metric: str) -> list[float]:
        stability = self.step.get("stability") or {}
        windows = stability.get("windows") if isinstance(stability, dict) else None
        windows = windows[-STABLE_WINDOWS:] if isinstance(windows, list) else []
        rates = [w.get("images_per_s") if isinstance(w, dict) else None for w in windows]
        if len(rates) < 2 or not all(isinstance(r, (int, float)) and math.isfinite(r) and r >= 0 for r in rates):
            raise FigureUnavailable(f"{metric} needs at least 2 measured windows per step in both runs; the {self.run} "
                                    "run has fewer (sweep levels judged for stability have them: --max-trials 3 or more)")
        if metric == "requests_per_s":  # a run sends a fixed number of images per request
            images, requests = self.step.get("images_per_s"), self.step.get("requests_per_s")
            if not images or not requests:
                raise FigureUnavailable(f"the {self.run} run has no throughput for this step")
            rates = [rate * requests / images for rate in rates]
        return rates

    def errors(self) -> tuple[int, int]:
        errors, issued = self.step.get("errors_total"), self.step.get("issued")
        if not isinstance(errors, int) or not isinstance(issued, int) or not 0 <= errors <= issued or issued == 0:
            raise FigureUnavailable(f"the {self.run} run issued no request in this step")
        return errors, issued


def judge_clause(clause: Clause, base: _Side, new: _Side, resampler: Resampler, *stream: int) -> Judgement:
    change = relative if clause.relative else absolute
    try:
        if clause.metric in THROUGHPUT_METRICS:
            interval = window_interval(base.windows(clause.metric), new.windows(clause.metric), resampler, change,
                                       *stream)
        elif clause.metric == ERROR_METRIC:
            interval = rate_interval(base.errors(), new.errors(), resampler, *stream)
        else:
            base_values, new_values = base.latency(), new.latency()
            if clause.metric != "mean":
                percentile = dict(PERCENTILES)[clause.metric]
                needed = min_samples(percentile)
                for side, values in ((base, base_values), (new, new_values)):
                    if values.total < needed:
                        raise FigureUnavailable(f"{clause.metric} needs {needed} samples per step; the {side.run} "
                                                f"run has {values.total} (a longer --duration holds more)")
            interval = latency_interval(base_values, new_values, clause.metric, resampler, change, *stream)
    except FigureUnavailable as error:
        return Judgement(clause, UNJUDGED, reason=str(error))
    return Judgement(clause, clause_verdict(clause, interval), interval)


def judge(pairs: Sequence[tuple[dict, dict]], clauses: Sequence[Clause], resampler: Resampler) -> GateResult:
    """Every matched ``(base step, new step)`` pair on every clause."""
    steps = []
    for step_number, (step_base, step_new) in enumerate(pairs):
        base, new = _Side(step_base, "base"), _Side(step_new, "new")
        load = step_load(step_base) + (f" ({step_base['phase']})" if step_base.get("phase") else "")
        steps.append(StepJudgement(load, tuple(
            judge_clause(clause, base, new, resampler, step_number, clause_number)
            for clause_number, clause in enumerate(clauses))))
    return GateResult(tuple(steps), resampler.confidence, resampler.resamples)


# --- rendering ----------------------------------------------------------------------------------------------------

SUMMARY_HEADER = ("metric", "base", "new", "Δ", "CI", "threshold", "verdict")


def _figure(clause: Clause, value: float) -> str:
    if clause.metric in LATENCY_METRICS:
        return f"{value / 1000:.3f} ms"
    if clause.metric == ERROR_METRIC:
        return f"{value * 100:.2f}%"
    return f"{value:.1f}/s"


def judgement_row(judgement: Judgement) -> list[str]:
    clause, interval = judgement.clause, judgement.interval
    threshold = f"{clause.op} {clause.shown(clause.limit)}"
    if interval is None:
        return [clause.metric, DASH, DASH, DASH, DASH, threshold, f"{UNJUDGED}: {judgement.reason}"]
    return [clause.metric, _figure(clause, interval.base), _figure(clause, interval.new), clause.shown(interval.change),
            f"[{clause.shown(interval.low)}, {clause.shown(interval.high)}]", threshold, judgement.verdict]


def verdict_line(result: GateResult) -> str:
    counts = {v: sum(step.verdict == v for step in result.steps) for v in VERDICT_ORDER}
    said = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return f"**{result.verdict}** ({said}; {len(result.steps)} matched step{'s' * (len(result.steps) != 1)})"


def render_gate(result: GateResult, clauses: Sequence[Clause], heading: str = "##") -> list[str]:
    """The gate's verdict first, then a table per step: base, new, Δ with its interval, threshold, verdict."""
    lines = [f"{heading} Regression gate: {verdict_line(result)}", "",
             f"--fail-on `{','.join(clause.text for clause in clauses)}`; {result.confidence:.0%} bootstrap "
             f"confidence intervals of new − base ({result.resamples} resamples of each run, fixed seed)."]
    for step in result.steps:
        lines += ["", f"{heading}# {step.load}: {step.verdict}", "",
                  "| " + " | ".join(SUMMARY_HEADER) + " |", "|---|" + "---:|" * (len(SUMMARY_HEADER) - 2) + "---|"]
        lines += ["| " + " | ".join(judgement_row(j)) + " |" for j in step.judgements]
    return lines


def render_summary(result: GateResult, clauses: Sequence[Clause], base_name: str, new_name: str) -> str:
    """The Markdown a CI job posts: the verdict first."""
    lines = render_gate(result, clauses, heading="#")
    lines[1:1] = ["", f"Base `{base_name}`, new `{new_name}`."]
    return "\n".join([*lines, ""])
