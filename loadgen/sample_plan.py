"""What a step must hold to claim each objective's percentile, worked out before any load: the samples needed
under the sample rule (``slo.samples_needed``), the request rate at which the measured time holds them (with a
margin for Poisson arrivals), and for each rate the run asks for (open loop) how long its step measures to hold
them (a window grows up to ``--max-duration``) or that even that cannot; such a step ends INCONCLUSIVE on that
objective, so the plan names the ``--duration`` that would let it."""

from __future__ import annotations

import math

from ipsbench.loadgen.slo import (
    EARLY_STOPPING,
    MIN_SAMPLES,
    LatencyObjective,
    duration_to_hold,
    samples_needed,
    samples_to_expect,
)
from ipsbench.loadgen.trials import STABLE_WINDOWS


def judged_windows(steps) -> int:
    """How many ``--duration`` windows a step is judged on: one, or its last 3 when stability is judged."""
    trials = getattr(steps, "max_trials", 1)
    return min(trials, STABLE_WINDOWS) if trials > 1 else 1


def asked_rates(steps) -> list[float]:
    """The open-loop rates the run will step through, where they are known before it starts (lowest first)."""
    if getattr(steps, "search", None) == "rate":
        return [steps.low]  # the search's lower end is where samples are fewest
    if getattr(steps, "arrival", None) == "trace":
        total_s = sum(steps.interarrivals_s)
        return [len(steps.interarrivals_s) / total_s] if total_s else []
    return sorted(getattr(steps, "rates_per_s", ()))


def longest_measured_s(steps) -> float:
    """How long a step may measure to hold its samples: its window grown up to ``--max-duration``, or (judged
    for stability) its last windows as they are."""
    if judged_windows(steps) > 1:
        return steps.window_s * judged_windows(steps)
    return getattr(steps, "longest_window_s", steps.window_s)


def sample_plan(objectives: list[LatencyObjective], steps, rule: str = MIN_SAMPLES) -> list[dict]:
    """One entry per objective: samples needed under ``rule``, the rate that earns them in the measured time, how
    long a step at each asked rate takes to hold them, and the asked rates too low to even in the longest window
    (with the duration each would need)."""
    windows = judged_windows(steps)
    seconds = steps.window_s * windows
    longest_s = longest_measured_s(steps)
    plan = []
    for objective in objectives:
        needed = samples_needed(objective.percentile, rule)
        expect = samples_to_expect(needed)
        at_rates = [
            {"rate_per_s": rate, "samples": math.floor(rate * seconds),
             "seconds_to_hold": max(seconds, duration_to_hold(needed, rate * windows) * windows)}
            for rate in asked_rates(steps)
        ]
        short = [
            {"rate_per_s": entry["rate_per_s"], "samples": entry["samples"],
             "duration_needed_s": duration_to_hold(needed, entry["rate_per_s"] * windows)}
            for entry in at_rates if entry["seconds_to_hold"] > longest_s
        ]
        plan.append({
            "objective": objective.name, "rule": rule, "samples_needed": needed, "measured_s": seconds,
            "longest_s": longest_s, "rate_needed_per_s": math.ceil(expect / seconds) if seconds > 0 else None,
            "at_rates": at_rates, "too_short_at": short,
        })
    return plan


def plan_lines(plan: list[dict]) -> list[str]:
    """The plan in sentences, as the console says it before any load."""
    lines = []
    for entry in plan:
        at_least = "at least " if entry["rule"] == EARLY_STOPPING else ""
        rule = ("early stopping: more the nearer the step is to its target" if entry["rule"] == EARLY_STOPPING
                else "min-samples")
        grows = (f"; a step short of them measures longer, up to {entry['longest_s']:g} s (--max-duration)"
                 if entry["longest_s"] > entry["measured_s"] else "")
        lines.append(
            f"{entry['objective']} needs {at_least}{entry['samples_needed']:,} samples per step ({rule}): "
            f"{entry['measured_s']:g} s measured holds them at {entry['rate_needed_per_s']:,} requests/s or "
            f"more{grows}"
        )
        short_rates = {short["rate_per_s"] for short in entry["too_short_at"]}
        for at in entry["at_rates"]:
            if at["rate_per_s"] not in short_rates and at["seconds_to_hold"] > entry["measured_s"]:
                lines.append(f"  at {at['rate_per_s']:g} requests/s a step measures about {at['seconds_to_hold']:g} s "
                             "to hold them")
        for short in entry["too_short_at"]:
            lines.append(
                f"  at {short['rate_per_s']:g} requests/s a step holds about {short['samples']:,}: too few to claim "
                f"{entry['objective']}, so it cannot be judged (--duration {short['duration_needed_s']}s "
                f"would hold them)"
            )
    return lines
