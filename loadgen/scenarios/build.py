"""From run settings to a scenario's locust parts: its load shape and its (configured) user class."""

from __future__ import annotations

from ipsbench.loadgen.recorder import RunRecorder
from ipsbench.loadgen.scenarios.base import StepShape
from ipsbench.loadgen.scenarios.rate import RateShape
from ipsbench.loadgen.scenarios.slo import SloSearchShape
from ipsbench.loadgen.scenarios.sweep import SweepShape
from ipsbench.loadgen.settings import RunSettings
from ipsbench.loadgen.slo import Search, parse_objective
from ipsbench.loadgen.users import KServeUser, OpenLoopUser, StepSource, Workload


def shape_for(settings: RunSettings, recorder: RunRecorder) -> StepShape:
    steps = settings.steps
    timing = {"warmup_s": steps.warmup_s, "window_s": steps.window_s, "drain_s": steps.drain_s, "recorder": recorder}
    if settings.search is not None:
        search = settings.search
        return SloSearchShape(
            search=Search(search.search, search.low, search.high, search.max_steps, search.resolution),
            objectives=[parse_objective(text) for text in settings.validity.latency_slo],
            max_error_rate=settings.validity.max_error_rate,
            **timing,
        )
    if settings.rate is not None:
        shape = RateShape(rates_per_s=settings.rate.rates_per_s, **timing)
        shape.phase = "trace" if settings.scenario == "trace" else None
        return shape
    sweep = settings.sweep
    return SweepShape(
        concurrency=sweep.concurrency, stability=sweep.stability, max_trials=sweep.max_trials,
        phases=sweep.phases, **timing,
    )


def user_classes() -> dict[str, type]:
    """Fresh concrete user classes, closed and open loop, named as locust will dispatch them."""
    return {
        "closed": type(KServeUser.__name__, (KServeUser,), {"abstract": False}),
        "open": type(OpenLoopUser.__name__, (OpenLoopUser,), {"abstract": False}),
    }


def loop_of(settings: RunSettings) -> str:
    return "open" if settings.open_loop else "closed"


def configure_user_class(
    user_class: type, settings: RunSettings, workload: Workload | None, steps: StepSource | None
) -> type:
    """Give ``user_class`` what it sends and where its steps come from (None: the environment's shape)."""
    user_class.workload = workload
    user_class.steps = steps
    if settings.open_loop:
        scenario = settings.steps
        user_class.arrival = scenario.arrival
        user_class.max_in_flight = scenario.max_in_flight
        user_class.seed = settings.workload.seed
        user_class.interarrivals_s = getattr(scenario, "interarrivals_s", ())
    return user_class


def user_class_for(settings: RunSettings, workload: Workload | None, steps: StepSource | None = None) -> type:
    return configure_user_class(user_classes()[loop_of(settings)], settings, workload, steps)
