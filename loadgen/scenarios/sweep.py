"""``sweep``: closed-loop concurrency levels, one step per level (perf_analyzer's concurrency range); each level
runs measured windows until the last 3 agree within ``stability`` (at most ``max_trials``). ``offline``,
``single-stream``, ``ramp`` and ``spike`` are sweeps with their own levels."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from ipsbench.loadgen.levels import level_list
from ipsbench.loadgen.scenarios.base import Scenario, StepPlan, StepPlanner
from ipsbench.loadgen.settings import MAX_TRIALS, RunSettings, StepSettings, check_concurrency
from ipsbench.loadgen.stability import DEFAULT_STABILITY_METRICS, STABILITY_METRICS, stability_metric_list
from ipsbench.server.flags import option, values

MAX_RAMP_STEPS = 100
MAX_WINDOW_REQUESTS = 10_000_000


@dataclass(frozen=True, kw_only=True)
class SweepSettings(StepSettings):
    """Closed-loop concurrency sweep: one step per level; each level runs measured windows until the last 3
    agree (images/sec and p50 unless --stability-metric says) or the trials run out (perf_analyzer's stability
    rule)."""

    concurrency: tuple[int, ...] = option(
        (1, 2, 4), "concurrency levels: 1,2,4, or a range as perf_analyzer takes it, 1:16:4 or 1:64:x2 (doubling)",
        parse=level_list(int, "concurrency", "1,2,4 or 1:64:x2"),
    )
    stability: float = option(0.10, (
        "the last 3 windows of a level must agree within this fraction of their mean, on each --stability-metric"
    ))
    max_trials: int = option(10, (
        "measured windows per level at most before it is marked UNSTABLE (1: a single window, not judged)"
    ))
    stability_metrics: tuple[str, ...] = option(DEFAULT_STABILITY_METRICS, (
        f"what the last 3 windows must agree on, comma-separated of {', '.join(STABILITY_METRICS)}; a percentile "
        "is judged only when each window holds the samples it needs (100/(1-p))"
    ), flag="--stability-metric", parse=stability_metric_list, metavar="METRICS")
    window_requests: int = option(0, (
        "measure each stability window by count: it ends after N completed requests (perf_analyzer's count "
        "windows; each load-generating process counts its own); 0: by time, --duration each. A level still "
        "ends by --duration x --max-trials"
    ), metavar="N")
    phases: tuple[str, ...] = option((), "a name per level (ramp and spike steps)", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_concurrency(self.concurrency)
        if not 0 <= self.stability <= 1:
            raise ValueError(f"stability must be in [0, 1], got {self.stability:g}")
        if not 1 <= self.max_trials <= MAX_TRIALS:
            raise ValueError(f"max trials must be in [1, {MAX_TRIALS}], got {self.max_trials}")
        if not 0 <= self.window_requests <= MAX_WINDOW_REQUESTS:
            raise ValueError(f"window requests must be in [0, {MAX_WINDOW_REQUESTS}], got {self.window_requests}")
        if self.phases and len(self.phases) != len(self.concurrency):
            raise ValueError("one phase name per level")

    @property
    def step_count(self) -> int:
        return len(self.concurrency)

    @property
    def windows_per_step(self) -> int:
        return self.max_trials


def sweep_plans(
    concurrency: Sequence[int], warmup_s: float, window_s: float, max_trials: int, stability: float,
    phases: Sequence[str] = (), stability_metrics: Sequence[str] = DEFAULT_STABILITY_METRICS,
    window_requests: int = 0,
) -> list[StepPlan]:
    """One step per concurrency level, measured in windows until the last 3 agree (one window: ``max_trials`` 1)."""
    phases = list(phases) or [None] * len(concurrency)
    return [
        StepPlan(users=level, warmup_s=warmup_s, window_s=window_s, trials_max=max_trials, tolerance=stability,
                 stability_metrics=tuple(stability_metrics), window_requests=window_requests, phase=phase)
        for level, phase in zip(concurrency, phases)
    ]


def sweep_planner(settings: RunSettings) -> StepPlanner:
    steps = settings.steps
    return StepPlanner(sweep_plans(steps.concurrency, steps.warmup_s, steps.window_s, steps.max_trials,
                                   steps.stability, steps.phases, steps.stability_metrics, steps.window_requests))


def ramp_levels(start: int, end: int, steps: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """``steps`` levels from ``start`` to ``end`` (evenly spaced, whole users); the last is the peak."""
    if steps < 2:
        return (end,), ("peak",)
    levels = tuple(round(start + (end - start) * number / (steps - 1)) for number in range(steps))
    return levels, (*["ramp"] * (steps - 1), "peak")


def spike_levels(base: int, spike: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Baseline, spike, then the baseline again to see whether latency recovers."""
    return (base, spike, base), ("baseline", "spike", "recovery")


def _ramp_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="ramp_from", type=int, default=1, help="first concurrency level")
    parser.add_argument("--to", dest="ramp_to", type=int, required=True, help="last (peak) concurrency level")
    parser.add_argument("--steps", dest="ramp_steps", type=int, default=4, help="levels, the first and last included")


def _ramp_settings(args: argparse.Namespace) -> SweepSettings:
    if not 1 <= args.ramp_steps <= MAX_RAMP_STEPS:
        raise ValueError(f"ramp steps must be in [1, {MAX_RAMP_STEPS}]")
    levels, phases = ramp_levels(args.ramp_from, args.ramp_to, args.ramp_steps)
    return SweepSettings(**values(args, SweepSettings, skip=("concurrency",)), concurrency=levels, phases=phases)


def _spike_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", type=int, default=1, help="baseline concurrency")
    parser.add_argument("--spike", type=int, required=True, help="concurrency during the spike")


def _spike_settings(args: argparse.Namespace) -> SweepSettings:
    levels, phases = spike_levels(args.base, args.spike)
    return SweepSettings(**values(args, SweepSettings, skip=("concurrency",)), concurrency=levels, phases=phases)


SWEEP = Scenario(
    name="sweep", help="closed-loop concurrency sweep", description=SweepSettings.__doc__,
    settings=SweepSettings, planner=sweep_planner, from_args=lambda args: SweepSettings(**values(args, SweepSettings)),
)
OFFLINE = Scenario(
    name="offline", help="maximum throughput: large requests, closed loop",
    description="Maximum throughput with large requests (MLPerf Offline).",
    settings=SweepSettings, planner=sweep_planner, from_args=SWEEP.from_args,
    defaults={"concurrency": (4,), "images_per_request": 8},
)
SINGLE_STREAM = Scenario(
    name="single-stream", help="one request in flight; p90 as MLPerf reports it",
    description="One request at a time (MLPerf SingleStream); its p90 is the figure.",
    settings=SweepSettings, planner=sweep_planner, skip=("concurrency",),
    from_args=lambda args: SweepSettings(**values(args, SweepSettings, skip=("concurrency",)), concurrency=(1,)),
)
RAMP = Scenario(
    name="ramp", help="closed-loop concurrency ramp (soak)",
    description="Concurrency from --from to --to in --steps levels, each a measured step.",
    settings=SweepSettings, planner=sweep_planner, skip=("concurrency",), defaults={"max_trials": 1},
    add_arguments=_ramp_arguments, from_args=_ramp_settings,
)
SPIKE = Scenario(
    name="spike", help="baseline, spike, recovery (soak)",
    description="A baseline concurrency, a spike, then the baseline again.",
    settings=SweepSettings, planner=sweep_planner, skip=("concurrency",), defaults={"max_trials": 1},
    add_arguments=_spike_arguments, from_args=_spike_settings,
)
