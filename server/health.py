"""The standard gRPC health service (``grpc.health.v1``), following the server's readiness."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

SERVICES = ("", "inference.GRPCInferenceService")
"""Service names answered; any other name gets NOT_FOUND (the health-checking spec)."""


class Health:
    def __init__(self) -> None:
        self._servicer = health_aio.HealthServicer()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in SERVICES:
            await self._servicer.set(service, status)

    async def enter_shutdown(self) -> None:
        """NOT_SERVING for every service, for good."""
        await self._servicer.enter_graceful_shutdown()
