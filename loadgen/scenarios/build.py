"""From run settings to a scenario's locust parts: its load shape and its (configured) user class."""

from __future__ import annotations

from loadgen.recorder import RunRecorder
from loadgen.scenarios.base import StepShape
from loadgen.scenarios.rate import RateShape
from loadgen.scenarios.sweep import SweepShape
from loadgen.settings import RunSettings
from loadgen.users import KServeUser, OpenLoopUser, StepSource, Workload


def shape_for(settings: RunSettings, recorder: RunRecorder) -> StepShape:
    if settings.rate is not None:
        rate = settings.rate
        return RateShape(
            rates_per_s=rate.rates_per_s, warmup_s=rate.warmup_s, window_s=rate.window_s, recorder=recorder,
            drain_s=rate.drain_s,
        )
    sweep = settings.sweep
    return SweepShape(
        concurrency=sweep.concurrency, warmup_s=sweep.warmup_s, window_s=sweep.window_s, recorder=recorder,
        drain_s=sweep.drain_s,
    )


def user_classes() -> dict[str, type]:
    """Fresh concrete user classes, one per scenario kind, named as locust will dispatch them."""
    return {
        "sweep": type(KServeUser.__name__, (KServeUser,), {"abstract": False}),
        "rate": type(OpenLoopUser.__name__, (OpenLoopUser,), {"abstract": False}),
    }


def configure_user_class(
    user_class: type, settings: RunSettings, workload: Workload | None, steps: StepSource | None
) -> type:
    """Give ``user_class`` what it sends and where its steps come from (None: the environment's shape)."""
    user_class.workload = workload
    user_class.steps = steps
    if settings.rate is not None:
        user_class.arrival = settings.rate.arrival
        user_class.max_in_flight = settings.rate.max_in_flight
        user_class.seed = settings.workload.seed
    return user_class


def user_class_for(settings: RunSettings, workload: Workload | None, steps: StepSource | None = None) -> type:
    return configure_user_class(user_classes()[settings.scenario], settings, workload, steps)
