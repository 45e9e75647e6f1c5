"""KServe v2 / Triton gRPC servicer: each RPC converts, calls the core, converts back.

Errors are mapped in one place (:func:`rpc`): a :class:`ServerError` becomes its status code and message and one
log line; anything else becomes INTERNAL with a request id, and its traceback goes to the log only.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from server import convert
from server.core import EXTENSIONS, SERVER_NAME, InferenceCore
from server.errors import ServerError, new_request_id

log = logging.getLogger(__name__)


def rpc(method):
    """Map exceptions raised by an async RPC method to gRPC statuses."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except ServerError as exc:
            log.debug("%s -> %s: %s", name, exc.code.name, exc.message)
            await context.abort(exc.code, exc.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            request_id = new_request_id()
            log.exception("%s failed (request id %s)", name, request_id)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal server error (request id {request_id})")

    return wrapper


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self._core = core

    def add_to_server(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)

    @rpc
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=self._core.live)

    @rpc
    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self._core.ready)

    @rpc
    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=self._core.model_ready(request.name, request.version))

    @rpc
    async def ServerMetadata(self, request, context):
        return convert.server_metadata_to_grpc(SERVER_NAME, self._core.version, EXTENSIONS)

    @rpc
    async def ModelMetadata(self, request, context):
        spec, versions = self._core.model_metadata(request.name, request.version)
        return convert.model_metadata_to_grpc(spec, versions)

    @rpc
    async def ModelConfig(self, request, context):
        return service_pb2.ModelConfigResponse(config=self._core.model_config(request.name, request.version))

    @rpc
    async def ModelStatistics(self, request, context):
        return convert.model_statistics_to_grpc(self._core.model_statistics(request.name, request.version))

    @rpc
    async def RepositoryIndex(self, request, context):
        return convert.repository_index_to_grpc(self._core.repository_index(request.ready))

    @rpc
    async def ModelInfer(self, request, context):
        response = await self._core.infer(convert.infer_request_from_grpc(request))
        return convert.infer_response_to_grpc(response)


def _unsupported(rpc_name: str):
    async def handler(self, request, context: grpc.aio.ServicerContext):
        log.debug("%s -> UNIMPLEMENTED", rpc_name)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc_name} is not supported by ipsbench-serve")

    handler.__name__ = rpc_name
    return handler


for _method in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if _method.name not in InferenceServicer.__dict__:
        setattr(InferenceServicer, _method.name, _unsupported(_method.name))
