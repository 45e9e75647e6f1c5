"""What a step must hold to claim each objective's percentile, worked out before any load: the samples needed
(``slo.min_samples``), the request rate at which the measured time holds them (with a margin for Poisson
arrivals), and for each rate the run asks for (open loop) whether it can; a step that cannot ends INCONCLUSIVE on
that objective, so the plan names the ``--duration`` that would let it."""

from __future__ import annotations

import math

from ipsbench.loadgen.slo import LatencyObjective, duration_to_hold, min_samples, samples_to_expect
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


def sample_plan(objectives: list[LatencyObjective], steps) -> list[dict]:
    """One entry per objective: samples needed, the rate that earns them in the measured time, and the asked
    rates too low to (with the duration each would need)."""
    windows = judged_windows(steps)
    seconds = steps.window_s * windows
    plan = []
    for objective in objectives:
        needed = min_samples(objective.percentile)
        expect = samples_to_expect(needed)
        short = [
            {"rate_per_s": rate, "samples": math.floor(rate * seconds),
             "duration_needed_s": duration_to_hold(needed, rate * windows)}
            for rate in asked_rates(steps) if rate * seconds < expect
        ]
        plan.append({
            "objective": objective.name, "samples_needed": needed, "measured_s": seconds,
            "rate_needed_per_s": math.ceil(expect / seconds) if seconds > 0 else None, "too_short_at": short,
        })
    return plan


def plan_lines(plan: list[dict]) -> list[str]:
    """The plan in sentences, as the console says it before any load."""
    lines = []
    for entry in plan:
        lines.append(
            f"{entry['objective']} needs {entry['samples_needed']:,} samples per step: {entry['measured_s']:g} s "
            f"measured holds them at {entry['rate_needed_per_s']:,} requests/s or more"
        )
        for short in entry["too_short_at"]:
            lines.append(
                f"  at {short['rate_per_s']:g} requests/s a step holds about {short['samples']:,}: too few to claim "
                f"{entry['objective']}, so it cannot be judged (--duration {short['duration_needed_s']}s "
                f"would hold them)"
            )
    return lines
