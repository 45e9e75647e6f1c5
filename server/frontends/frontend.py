"""A front-end process of ``--frontends N``: one gRPC server on the shared port, its requests sent to the engine.

Each front end receives requests (gRPC's threads and this process's event loop), parses them without copying the
tensors (:mod:`ipsbench.server.wire`), admits them by bytes (its share of ``--max-inflight-mb``), copies their
tensors into its ring and encodes the responses; the kernel spreads the clients' connections over the front ends
(SO_REUSEPORT). ServerLive and gRPC health are answered here (health follows the readiness the engine announces);
every other RPC is the engine's answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal

import grpc
from tritonclient.grpc import service_pb2

from ipsbench.server.admission import ByteBudget
from ipsbench.server.app import STOP_GRACE_S, new_grpc_server, url_host
from ipsbench.server.errors import ServerError, new_request_id
from ipsbench.server.frontends.engine_link import EngineLink
from ipsbench.server.frontends.engine_side import FORWARDED_METHODS
from ipsbench.server.frontends.ring import mirror_readings
from ipsbench.server.grpc_service import InferenceServicer, rpc
from ipsbench.server.health import Health
from ipsbench.server.loop_monitor import LoopMonitor
from ipsbench.server.security import SecurityConfigError, server_credentials
from ipsbench.server.settings import Settings
from ipsbench.server.wire import InferRequestWire, join_infer_response

log = logging.getLogger(__name__)

MAX_SLOT_BYTES = 8 * 1024 * 1024
"""A slot holds a request of 8 FP32 224×224 images (4.8 MB) and its response; larger ones travel in the frame."""
MIN_SLOTS = 4


class FrontendServicer(InferenceServicer):
    """The inference RPCs taken off the wire and admitted here, run by the engine; the others forwarded as bytes."""

    def __init__(self, link: EngineLink, budget: ByteBudget) -> None:
        super().__init__(link, None, None, budget, None)  # type: ignore[arg-type]
        self._link = link

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        handlers = super().method_handlers()
        for name in FORWARDED_METHODS:
            if name == "ServerLive":
                continue
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                self._forwarder(name), request_deserializer=None, response_serializer=None
            )
        return handlers

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @rpc
    async def ModelInfer(self, request: InferRequestWire, context):
        if request.error:
            raise ServerError(grpc.StatusCode.INTERNAL, request.error)
        with self._budget.holding(request.size):
            async with self._link.infer(request.message, request.raw) as (header, payloads):
                return join_infer_response(header, payloads)

    async def _stream_response(self, wire: InferRequestWire) -> service_pb2.ModelStreamInferResponse:
        if wire.error:
            return await super()._stream_response(wire)
        request = wire.message
        try:
            with self._budget.holding(wire.size):
                async with self._link.infer(request, wire.raw) as (header, payloads):
                    response = service_pb2.ModelInferResponse.FromString(header)
                    response.raw_output_contents.extend(bytes(p) for p in payloads)
                    return service_pb2.ModelStreamInferResponse(infer_response=response)
        except ServerError as exc:
            message = exc.message
        except Exception:
            request_id = new_request_id()
            log.exception("ModelStreamInfer request failed (request id %s)", request_id)
            message = f"internal server error (request id {request_id})"
        return service_pb2.ModelStreamInferResponse(
            error_message=message,
            infer_response=service_pb2.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            ),
        )

    def _forwarder(self, name: str):
        link = self._link
        not_ready = service_pb2.ServerReadyResponse(ready=False).SerializeToString()

        async def forward(_self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if name == "ServerReady" and not link.connected.is_set():
                return not_ready
            metadata = tuple((m.key, m.value) for m in context.invocation_metadata() or ())
            return await link.call(name, request, metadata, context.peer())

        forward.__name__ = name
        # rpc: a ServerError becomes its status, anything else (a link broken mid-call) INTERNAL with a request id.
        return functools.partial(rpc(forward), self)


def ring_layout(settings: Settings) -> tuple[int, int]:
    """(slots, bytes per slot) of a front end's ring: ``--frontend-ring-mb`` in slots of at most 8 MiB, at least
    four of them."""
    ring_bytes = settings.frontend_ring_mb * 1024 * 1024
    slot_bytes = min(MAX_SLOT_BYTES, ring_bytes // MIN_SLOTS)
    return ring_bytes // slot_bytes, slot_bytes


async def serve_frontend(settings: Settings, index: int, socket_path, report) -> int:
    """Run front end ``index`` until SIGTERM; ``report(message)`` tells the supervisor how start-up went."""
    health = Health()
    link = EngineLink(socket_path, index, *ring_layout(settings), on_ready=health.set_serving)
    share = max(settings.max_inflight_bytes // settings.frontends, settings.grpc_max_message_bytes)
    budget = ByteBudget(share, link.counters)
    server = new_grpc_server(settings, reuse_port=True)
    FrontendServicer(link, budget).add_to_server(server)
    health.add_to_server(server)
    address = f"{url_host(settings.host)}:{settings.grpc_port}"
    try:
        credentials = server_credentials(settings)
        port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address,
                                                                                                     credentials)
    except (RuntimeError, SecurityConfigError) as exc:
        report(("failed", f"cannot listen on {address}: {exc}"))
        return 1
    if not port:
        report(("failed", f"cannot listen on {address}"))
        return 1
    await server.start()
    await health.set_serving(False)
    report(("bound", port))
    link.start()
    monitor = LoopMonitor(on_tick=lambda readings: mirror_readings(link.counters, readings))
    monitor.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await health.enter_shutdown()
    await server.stop(STOP_GRACE_S)
    monitor.stop()
    await link.close()
    return 0
