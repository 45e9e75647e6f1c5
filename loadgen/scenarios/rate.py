"""``rate``: open-loop arrivals at fixed rates, one measured step per rate (MLPerf Server, perf_analyzer's
request-rate range); ``trace`` replays recorded inter-arrival times. The shape only times the steps;
:class:`ipsbench.loadgen.users.OpenLoopUser` sends on schedule.

From plain locust (``locust -f this_file.py --headless --host 127.0.0.1:8001``, ``--processes N`` too)::

    from locust import events
    from ipsbench.loadgen.shape import RateShape
    from ipsbench.loadgen.users import OpenLoopUser, Workload

    class Rates(RateShape):
        rates_per_s = (20, 40)

    class Sender(OpenLoopUser):
        arrival = "poisson"

    @events.init.add_listener
    def connect(environment, **_):
        Sender.workload = Workload.connect(environment.host, "resnet18")
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from ipsbench.loadgen.arrivals import MAX_RATE_PER_S, read_trace
from ipsbench.loadgen.levels import level_list
from ipsbench.loadgen.scenarios.base import Scenario, StepPlan, StepPlanner
from ipsbench.loadgen.settings import MAX_TRACE_ARRIVALS, MAX_TRIALS, OpenLoopSettings, RunSettings
from ipsbench.loadgen.stability import DEFAULT_STABILITY_METRICS, STABILITY_METRICS, stability_metric_list
from ipsbench.server.flags import option, values

TRACE_END_SLACK_S = 0.001
"""A trace step's window runs this long past the trace's last arrival, so that arrival falls inside it."""


def check_rate(rate: float) -> None:
    if not 0 < rate <= MAX_RATE_PER_S:
        raise ValueError(f"rate must be in (0, {MAX_RATE_PER_S:g}] requests/s, got {rate:g}")


@dataclass(frozen=True, kw_only=True)
class RateSettings(OpenLoopSettings):
    """Open-loop arrivals at fixed rates: one step per rate; latency from each request's intended send time."""

    rates_per_s: tuple[float, ...] = option(
        help="arrival rates in requests/s: 20,40, or a range, 100:1000:100 or 10:160:x2 (doubling)", flag="--rate",
        parse=level_list(float, "rate", "20,40 or 100:1000:100"),
    )
    max_trials: int = option(1, (
        "measured windows (--duration each) per rate at most, until the last 3 agree on each --stability-metric "
        "(arrivals counted in the window they were due in); 1: one window, not judged. The step's figures cover "
        "every window it ran"
    ))
    stability: float = option(0.10, "the last 3 windows must agree within this fraction of their mean")
    stability_metrics: tuple[str, ...] = option(DEFAULT_STABILITY_METRICS, (
        f"what the last 3 windows must agree on, comma-separated of {', '.join(STABILITY_METRICS)}"
    ), flag="--stability-metric", parse=stability_metric_list, metavar="METRICS")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.rates_per_s:
            raise ValueError("at least one rate is needed")
        for rate in self.rates_per_s:
            check_rate(rate)
        if not 1 <= self.max_trials <= MAX_TRIALS:
            raise ValueError(f"max trials must be in [1, {MAX_TRIALS}], got {self.max_trials}")
        if not 0 <= self.stability <= 1:
            raise ValueError(f"stability must be in [0, 1], got {self.stability:g}")

    @property
    def step_count(self) -> int:
        return len(self.rates_per_s)

    @property
    def windows_per_step(self) -> int:
        return self.max_trials


def rate_plans(rates_per_s: Sequence[float], warmup_s: float, window_s: float,
               phase: str | None = None, max_trials: int = 1, stability: float = 0.10,
               stability_metrics: Sequence[str] = DEFAULT_STABILITY_METRICS) -> list[StepPlan]:
    """One step per rate; each step's rate is split evenly among its senders (one per locust process)."""
    return [StepPlan(users=0, warmup_s=warmup_s, window_s=window_s, rate_per_s=rate, phase=phase,
                     trials_max=max_trials, tolerance=stability, stability_metrics=tuple(stability_metrics))
            for rate in rates_per_s]


def rate_planner(settings: RunSettings) -> StepPlanner:
    steps = settings.steps
    phase = "trace" if steps.arrival == "trace" else None
    return StepPlanner(rate_plans(steps.rates_per_s, steps.warmup_s, steps.window_s, phase,
                                  steps.max_trials, steps.stability, steps.stability_metrics))


def _trace_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True, metavar="FILE",
                        help="one inter-arrival time in seconds per line, or a CSV column interarrival_s")


def _trace_settings(args: argparse.Namespace) -> RateSettings:
    """The trace's arrivals; its measured window is the trace after the warm-up."""
    try:
        interarrivals = read_trace(args.trace, MAX_TRACE_ARRIVALS)
    except OSError as error:
        raise ValueError(f"--trace {args.trace}: {error.strerror}") from None
    total_s = sum(interarrivals)
    if total_s <= args.warmup_s:
        raise ValueError(f"the trace lasts {total_s:g} s, not longer than the {args.warmup_s:g} s warm-up")
    chosen = values(args, RateSettings, skip=TRACE_SKIPS)
    return RateSettings(**chosen, rates_per_s=(round(len(interarrivals) / total_s, 3),), arrival="trace",
                        interarrivals_s=interarrivals, window_s=total_s - args.warmup_s + TRACE_END_SLACK_S)


TRACE_SKIPS = ("window_s", "rates_per_s", "arrival")

RATE = Scenario(
    name="rate", help="open-loop arrivals at fixed rates", description=RateSettings.__doc__,
    settings=RateSettings, planner=rate_planner, from_args=lambda args: RateSettings(**values(args, RateSettings)),
)
TRACE = Scenario(
    name="trace", help="replay a file of inter-arrival times (open loop)",
    description="Open-loop arrivals replayed from a trace; the measured window is the trace after the warm-up.",
    settings=RateSettings, planner=rate_planner, skip=TRACE_SKIPS, add_arguments=_trace_arguments,
    from_args=_trace_settings,
)
