"""The engine process of ``--frontends N``: the one process that loads the models and runs their batchers.

It is :class:`~ipsbench.server.app.App`'s lifecycle with the gRPC front replaced by the front ends' link
(:class:`~ipsbench.server.frontends.engine_side.LinkServer`): it loads and warms the models, serves the metrics
(the front ends' counters summed in), says ``ready`` once the models are and every front end is connected, and on
SIGTERM refuses new work, drains what is in flight and tells the front ends it is stopping.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

import grpc

from ipsbench.server.admission import ByteBudget
from ipsbench.server.app import App
from ipsbench.server.frontends.engine_side import FrontendCollector, LinkServer, SummedServerStats
from ipsbench.server.grpc_service import InferenceServicer
from ipsbench.server.security import AdminAuth
from ipsbench.server.settings import Settings

log = logging.getLogger(__name__)

READINESS_CHECK_S = 0.25
"""How often the engine looks whether a model's readiness changed on its own (a batcher that stopped)."""


class EngineApp(App):
    # SIGINT from a terminal reaches every process of the group: the supervisor alone acts on it.
    handled_signals = (signal.SIGTERM,)

    def __init__(self, settings: Settings, socket_path: Path, announce: Callable[[str], None]) -> None:
        super().__init__(settings, announce=announce)
        self.socket_path = socket_path
        self.link: LinkServer | None = None
        self._announced_ready = False
        self._watch: asyncio.Task | None = None

    async def _start_front(self, admin: AdminAuth, credentials: grpc.ServerCredentials | None) -> bool:
        budget = ByteBudget(self.settings.max_inflight_bytes, self.server_stats)  # front ends admit; not used here
        servicer = InferenceServicer(self.core, self.control, admin, budget, self.shared_memory_registry())
        self.link = LinkServer(self.core, servicer, self.settings.frontends)
        self.link.on_ready_change = self._ready_changed
        try:
            await self.link.start(self.socket_path)
        except OSError as exc:
            log.error("cannot open the front ends' link: %s", exc)
            return False
        self._watch = asyncio.get_running_loop().create_task(self._watch_readiness(), name="readiness")
        return True

    def request_exit(self, sig: int | None = None) -> None:
        super().request_exit(sig)
        # Two signals sent close together may reach a process as one: the supervisor sends a forcing second
        # SIGTERM only once the engine has said it took the first.
        self.announce("ipsbench-serve: stopping")

    def _ready_changed(self, ready: bool) -> None:
        if ready and not self._announced_ready:
            self._announced_ready = True
            self.announce("ipsbench-serve: ready")

    async def _watch_readiness(self) -> None:
        while True:
            await asyncio.sleep(READINESS_CHECK_S)
            self.link.readiness_changed()

    async def _on_loaded(self) -> None:
        if not self.core.ready:
            log.warning("serving, but not ready: %d model(s) failed to load", len(self.models.failed))
        self.link.readiness_changed()

    def _on_shutdown_begun(self) -> None:
        if self.link is not None:
            self.link.readiness_changed()

    async def _stop_front(self, drained: bool) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.link is not None:
            await self.link.stop()

    def _start_metrics(self) -> None:
        self.metrics_registry.register(FrontendCollector(self.link))
        super()._start_metrics()

    process_role = "engine"

    def _process_readings(self):
        """This process's readings, then each connected front end's (role ``frontend``, its index)."""
        own = super()._process_readings()
        frontends = self.link.readings() if self.link is not None else {}
        return [*own, *(("frontend", str(index), readings) for index, readings in sorted(frontends.items()))]

    def _stats_for_metrics(self):
        return SummedServerStats(self.server_stats, self.link)
