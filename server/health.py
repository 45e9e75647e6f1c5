"""The standard gRPC health service (``grpc.health.v1``), following the server's readiness."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from ipsbench.server.wire import Unparseable, tolerant

SERVICE = "grpc.health.v1.Health"
log = logging.getLogger(__name__)

SERVICES = ("", "inference.GRPCInferenceService")
"""Service names answered; any other name gets NOT_FOUND (the health-checking spec)."""


class Health:
    def __init__(self) -> None:
        self._servicer = health_aio.HealthServicer()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """The health service's two RPCs, with a request deserializer that never raises (bytes that do not parse
        answer INTERNAL in one log line, as the inference service's RPCs do)."""
        servicer = self._servicer

        async def check(request, context: grpc.aio.ServicerContext):
            await _refuse_unparseable(request, context)
            return await servicer.Check(request, context)

        async def watch(request, context: grpc.aio.ServicerContext):
            await _refuse_unparseable(request, context)
            return await servicer.Watch(request, context)

        parse = tolerant(health_pb2.HealthCheckRequest)
        answer = health_pb2.HealthCheckResponse.SerializeToString
        handlers = {
            "Check": grpc.unary_unary_rpc_method_handler(check, request_deserializer=parse,
                                                         response_serializer=answer),
            "Watch": grpc.unary_stream_rpc_method_handler(watch, request_deserializer=parse,
                                                          response_serializer=answer),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in SERVICES:
            await self._servicer.set(service, status)

    async def enter_shutdown(self) -> None:
        """NOT_SERVING for every service, for good."""
        await self._servicer.enter_graceful_shutdown()


async def _refuse_unparseable(request, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, Unparseable):
        log.debug("%s -> INTERNAL: %s", SERVICE, request.error)
        await context.abort(grpc.StatusCode.INTERNAL, request.error)
