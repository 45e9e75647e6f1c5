"""A run's locust parts, built in one place: the user classes configured for its scenario and the locust
``Environment`` they run in (used by a run in one process, a distributed run's master, a worker and the web UI)."""

from __future__ import annotations

# locust patches the process for gevent on import; it must come first.
from locust.env import Environment  # isort: skip

from collections.abc import Callable

import gevent
from locust import events

from ipsbench.loadgen.settings import RunSettings
from ipsbench.loadgen.users import KServeUser, OpenLoopUser, StepSource, Workload


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
        user_class.interarrivals_s = scenario.interarrivals_s
    return user_class


def user_class_for(settings: RunSettings, workload: Workload | None, steps: StepSource | None = None) -> type:
    return configure_user_class(user_classes()[loop_of(settings)], settings, workload, steps)


def gevent_delivery(signum: int, handler: Callable[[int], None]) -> Callable[[], None]:
    """For :func:`ipsbench.server.signals.capture_signals`: the handler runs in a greenlet of its own, so it may
    wait and switch (stopping users, writing a report)."""
    watcher = gevent.signal_handler(signum, handler, signum)
    return watcher.cancel


def load_environment(user_classes: list[type], shape=None, stop_timeout: float | None = None,
                     host: str | None = None, shared_events: bool = False) -> Environment:
    """The locust environment of a run: exceptions in users are caught and counted, never fatal. Its events are
    its own unless ``shared_events`` (the web UI's, whose page listens on locust's global events)."""
    return Environment(user_classes=user_classes, shape_class=shape, stop_timeout=stop_timeout, host=host,
                       events=events if shared_events else None, catch_exceptions=True)
