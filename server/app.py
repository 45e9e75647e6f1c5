"""The server's lifecycle: ``serve()`` → ``startup()`` → ``main_loop()`` → ``shutdown()``.

Start-up binds gRPC first (ServerLive answers while models load; ServerReady and health stay false), then loads and
warms every model, then reports ready. SIGTERM/SIGINT start a graceful shutdown: health NOT_SERVING and ServerReady
false first, new inference refused with UNAVAILABLE, in-flight requests given ``grace_period_s`` to finish. A second
signal, or the grace period running out, ends the process at once with a non-zero code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from importlib import metadata

import grpc
from prometheus_client import CollectorRegistry

from ipsbench.server.admission import ByteBudget
from ipsbench.server.allocator import map_large_blocks
from ipsbench.server.control import ModelControl
from ipsbench.server.core import InferenceCore
from ipsbench.server.cuda_shared_memory import cuda_opener
from ipsbench.server.errors import without_paths
from ipsbench.server.grpc_service import InferenceServicer
from ipsbench.server.health import Health
from ipsbench.server.loop_monitor import LoopMonitor, ProcessReadings, process_cpus
from ipsbench.server.metrics import MetricsServer, ServerCollector, register_process_metrics
from ipsbench.server.models import ModelRegistry
from ipsbench.server.preprocess.stage import DecodePool
from ipsbench.server.security import AdminAuth, SecurityConfigError, check_startup_policy, load_admin_token, server_credentials
from ipsbench.server.settings import Settings
from ipsbench.server.shared_memory import SharedMemoryRegistry
from ipsbench.server.signals import HANDLED_SIGNALS, asyncio_delivery, capture_signals
from ipsbench.server.stats import ServerStats
from ipsbench.server.telemetry import GpuCollector, open_gpu_collector

log = logging.getLogger(__name__)

STOP_GRACE_S = 1.0
"""After in-flight inference is done, how long other open RPCs get before the gRPC server cancels them."""


def package_version() -> str:
    try:
        return metadata.version("ipsbench")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def url_host(host: str) -> str:
    """``[::1]`` for IPv6 literals, the host itself otherwise."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def new_grpc_server(settings: Settings, reuse_port: bool) -> grpc.aio.Server:
    """A gRPC server with the settings' message and RPC limits; ``reuse_port``: it shares its port with the other
    front ends (SO_REUSEPORT); without it a port already in use is an error."""
    max_bytes = settings.grpc_max_message_bytes
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", int(reuse_port)),
        ],
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
    )


def _stdout(line: str) -> None:
    print(line, flush=True)


class App:
    """One server process. ``announce`` receives the start-up lines that scripts parse (stdout by default).

    The engine process of ``--frontends N`` (:class:`ipsbench.server.frontends.engine.EngineApp`) is this lifecycle
    with its front (``_start_front`` / ``_stop_front``) facing the front-end processes instead of gRPC clients.
    """

    handled_signals: tuple[int, ...] = HANDLED_SIGNALS

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        announce: Callable[[str], None] = _stdout,
    ) -> None:
        self.settings = settings
        self.metrics_registry = registry if registry is not None else CollectorRegistry()
        self.announce = announce
        self.models = ModelRegistry()
        self.server_stats = ServerStats()
        self.core = InferenceCore(self.models, self.server_stats, package_version())
        self.decode_pool = DecodePool()
        """The threads preprocessing fronts decode in, shared by every front of this process."""
        self.control = ModelControl(settings, self.models, self.decode_pool)
        self.health = Health()
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self.forced_exit = False
        """True when the process must exit without waiting for engine threads (grace expired, second signal)."""
        self._grpc_server: grpc.aio.Server | None = None
        self._metrics_server: MetricsServer | None = None
        self._gpu: GpuCollector | None = None
        self.loop_monitor = LoopMonitor()
        self._exit = asyncio.Event()
        self._force = asyncio.Event()

    # -- entry point -----------------------------------------------------------------------------------------------

    def run(self) -> int:
        map_large_blocks()  # before the first request's buffers: see server/allocator.py
        return asyncio.run(self.serve())

    async def serve(self) -> int:
        """Run until a signal or :meth:`request_exit`; return the process exit code."""
        with capture_signals(self.request_exit, asyncio_delivery(asyncio.get_running_loop()), self.handled_signals):
            return await self._serve()

    async def _serve(self) -> int:
        code = 0
        try:
            startup = asyncio.create_task(self.startup(), name="startup")
            exit_wait = asyncio.create_task(self._exit.wait(), name="exit-wait")
            await asyncio.wait({startup, exit_wait}, return_when=asyncio.FIRST_COMPLETED)
            if startup.done():
                exit_wait.cancel()
                if startup.result():
                    await self.main_loop()
                else:
                    code = 1
            else:
                log.info("stop requested during start-up")
                startup.cancel()
                await asyncio.gather(startup, return_exceptions=True)
        finally:
            code = await self.shutdown() or code
        return code

    def request_exit(self, sig: int | None = None) -> None:
        name = signal.Signals(sig).name if sig else "request"
        if self._exit.is_set():
            log.warning("%s again: exiting now without waiting for in-flight requests", name)
            self._force.set()
            return
        log.info("%s received: shutting down gracefully (send it again to force)", name)
        self._exit.set()

    # -- phases ----------------------------------------------------------------------------------------------------

    async def startup(self) -> bool:
        """Bind the ports, load and warm every model, report ready. False when the server must exit."""
        settings = self.settings
        await self.health.set_serving(False)
        try:
            admin_token = load_admin_token(settings)
            check_startup_policy(settings, admin_token)
            credentials = server_credentials(settings)
        except SecurityConfigError as exc:
            log.error("%s", exc)
            return False
        if not await self._start_front(AdminAuth(admin_token), credentials):
            return False
        host = url_host(settings.host)
        if settings.allow_metrics:
            try:
                self._start_metrics()
            except OSError as exc:
                log.error("cannot serve metrics on %s:%d: %s", settings.host, settings.metrics_port, exc)
                return False
            self.announce(f"ipsbench-serve: metrics on http://{host}:{self.metrics_port}/metrics")
        if settings.is_loopback:
            log.info("listening on %s only; pass --host 0.0.0.0 to accept remote clients", settings.host)
        elif not settings.tls:
            log.warning("listening on %s without TLS: anyone who can reach this port can use it", settings.host)
        if settings.tls:
            log.info("gRPC over TLS%s", " with client certificates required" if settings.grpc_tls_client_auth else "")
        if admin_token is not None:
            log.info("admin RPCs (repository load/unload, log and trace settings) need the admin credential")
        log.info("holding at most %d MiB of inference requests at once (--max-inflight-mb)",
                 settings.max_inflight_bytes // (1024 * 1024))
        if not await self._load_models():
            return False
        self.core.mark_loaded()
        await self._on_loaded()
        return True

    async def _on_loaded(self) -> None:
        await self.health.set_serving(self.core.ready)
        if self.core.ready:
            self.announce("ipsbench-serve: ready")
        else:
            log.warning("serving, but not ready: %d model(s) failed to load", len(self.models.failed))

    async def main_loop(self) -> None:
        await self._exit.wait()

    async def shutdown(self) -> int:
        """NOT_SERVING, refuse new work, drain in-flight inference within the grace period, stop. Returns the code."""
        code = 0
        await self.health.enter_shutdown()
        self.core.begin_shutdown()
        self._on_shutdown_begun()
        grace = self.settings.grace_period_s
        if self.core.inflight:
            log.info("waiting up to %.1f s for %d in-flight request(s)", grace, self.core.inflight)
        drained = await self._wait_drained(grace)
        if not drained:
            if self._force.is_set():
                log.error("forced exit with %d request(s) still in flight", self.core.inflight)
            else:
                log.error("Exit timeout expired. Exiting immediately. (%d request(s) in flight)", self.core.inflight)
            self.forced_exit = True
            code = 1
        await self._stop_front(drained)
        for model in self.models:
            await model.batcher.stop(wait=drained)
        if drained:
            await self.control.close()
        self.decode_pool.shutdown()
        self.loop_monitor.stop()
        if self._metrics_server is not None:
            self._metrics_server.stop()
        if self._gpu is not None:
            self._gpu.close()
        log.info("stopped")
        return code

    # -- helpers ---------------------------------------------------------------------------------------------------

    async def _start_front(self, admin: AdminAuth, credentials: grpc.ServerCredentials | None) -> bool:
        """Start taking requests (here: the gRPC server) before the models load."""
        if not await self._start_grpc(admin, credentials):
            return False
        self.announce(f"ipsbench-serve: gRPC listening on {url_host(self.settings.host)}:{self.grpc_port}")
        return True

    def _on_shutdown_begun(self) -> None:
        """Readiness has just gone false for good."""

    async def _stop_front(self, drained: bool) -> None:
        if self._grpc_server is not None:
            await self._grpc_server.stop(STOP_GRACE_S if drained else 0)

    def shared_memory_registry(self) -> SharedMemoryRegistry:
        """The regions clients register (Triton's shared-memory extension), bounded as the settings say."""
        return SharedMemoryRegistry(self.settings.shm_max_regions, self.settings.shm_max_bytes, cuda_opener)

    def _stats_for_metrics(self):
        """The server-wide counts the metrics show."""
        return self.server_stats

    async def _start_grpc(self, admin: AdminAuth, credentials: grpc.ServerCredentials | None) -> bool:
        settings = self.settings
        server = new_grpc_server(settings, reuse_port=False)
        budget = ByteBudget(settings.max_inflight_bytes, self.server_stats)
        InferenceServicer(self.core, self.control, admin, budget, self.shared_memory_registry()).add_to_server(server)
        self.health.add_to_server(server)
        address = f"{url_host(settings.host)}:{settings.grpc_port}"
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            log.error("cannot listen on %s: %s", address, exc)
            return False
        if not port:
            log.error("cannot listen on %s", address)
            return False
        await server.start()
        self._grpc_server = server
        self.grpc_port = port
        return True

    def _start_metrics(self) -> None:
        self.metrics_registry.register(ServerCollector(self.models.stats, self._stats_for_metrics()))
        self.loop_monitor.start()
        register_process_metrics(self.metrics_registry, self._process_readings)
        self._gpu = open_gpu_collector()
        if self._gpu is not None:
            self.metrics_registry.register(self._gpu)
        self._metrics_server = MetricsServer(self.metrics_registry, self.settings.host, self.settings.metrics_port)
        self._metrics_server.start()
        self.metrics_port = self._metrics_server.port

    process_role = "server"
    """This process's ``role`` label in the per-process series."""

    def _process_readings(self) -> list[tuple[str, str, ProcessReadings]]:
        """(role, index, readings) of every serving process; this one's process CPU read now."""
        readings = dataclasses.replace(self.loop_monitor.readings, process_cpu_s=time.process_time(),
                                       cpus=process_cpus())
        return [(self.process_role, "0", readings)]

    async def _load_models(self) -> bool:
        try:
            errors = await self.control.load_at_startup()
        except OSError as exc:
            log.error("cannot read the model repository: %s", exc)
            return False
        for error in errors:
            log.error("load failed for model '%s': %s", error.name, error.message)
            self.models.add_failed(error.name, without_paths(error.message))
        if errors and self.settings.exit_on_error:
            log.error("exiting: %d model(s) failed to load (exit_on_error)", len(errors))
            return False
        if not errors and not any(True for _ in self.models) and not self.control.explicit:
            log.warning("the model repository has no models")
        return True

    async def _wait_drained(self, timeout_s: float) -> bool:
        if not self.core.inflight:
            return True
        idle = asyncio.create_task(self.core.wait_idle())
        force = asyncio.create_task(self._force.wait())
        await asyncio.wait({idle, force}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        done = idle.done()
        idle.cancel()
        force.cancel()
        return done
