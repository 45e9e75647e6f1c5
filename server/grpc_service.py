"""KServe v2 / Triton gRPC servicer: each RPC converts, calls the core, converts back.

Errors are mapped in one place (:func:`rpc`): a :class:`ServerError` becomes its status code and message and one
log line; anything else becomes INTERNAL with a request id, and its traceback goes to the log only. The admin RPCs
(repository load/unload, log and trace settings) check the admin credential before anything else.
ModelStreamInfer answers every request of the stream with one response (or one error message, the unary RPC's text),
running the requests concurrently so that they batch like unary ones. Both inference RPCs take their request
tensors off the wire without copies (:mod:`ipsbench.server.wire`); ModelInfer writes its response tensors once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ipsbench.server import convert
from ipsbench.server.admission import ByteBudget
from ipsbench.server.control import ModelControl
from ipsbench.server.core import EXTENSIONS, SERVER_NAME, InferenceCore
from ipsbench.server.errors import ServerError, new_request_id, unimplemented
from ipsbench.server.security import AdminAuth
from ipsbench.server.shared_memory import CUDA, SYSTEM, RegionUse, SharedMemoryRegistry, check_local_peer
from ipsbench.server.stats import RequestClock
from ipsbench.server.wire import InferRequestWire, Unparseable, decode_infer_request, tolerant

log = logging.getLogger(__name__)

SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
STREAM_MAX_OUTSTANDING = 1024
"""Requests of one stream read and not yet answered to the client (executing, or their responses waiting to be
written) at once; the stream stops reading (gRPC flow control) beyond this."""


def _internal_message(name: str, request_id: str) -> str:
    return f"internal server error (request id {request_id})"


def rpc(method):
    """Map exceptions raised by an async RPC method to gRPC statuses."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            if isinstance(request, Unparseable):
                raise ServerError(grpc.StatusCode.INTERNAL, request.error)
            return await method(self, request, context)
        except ServerError as exc:
            log.debug("%s -> %s: %s", name, exc.code.name, exc.message)
            await context.abort(exc.code, exc.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            request_id = new_request_id()
            log.exception("%s failed (request id %s)", name, request_id)
            await context.abort(grpc.StatusCode.INTERNAL, _internal_message(name, request_id))

    return wrapper


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        core: InferenceCore,
        control: ModelControl,
        admin: AdminAuth,
        budget: ByteBudget,
        shared_memory: SharedMemoryRegistry,
    ) -> None:
        self._core = core
        self._control = control
        self._admin = admin
        self._budget = budget
        self.shared_memory = shared_memory

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register every RPC of the service."""
        handlers = self.method_handlers()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
        if hasattr(server, "add_registered_method_handlers"):
            server.add_registered_method_handlers(SERVICE.full_name, handlers)

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """A handler per RPC of the service, the inference ones with the zero-copy request decoder."""
        handlers = {}
        for method in SERVICE.methods:
            behaviour = getattr(self, method.name)
            response_class = getattr(service_pb2, method.output_type.name)
            if method.name == "ModelInfer":
                # The handler returns the serialized response (convert.infer_response_to_wire).
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    behaviour, request_deserializer=decode_infer_request, response_serializer=None
                )
            elif method.name == "ModelStreamInfer":
                handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                    behaviour,
                    request_deserializer=decode_infer_request,
                    response_serializer=response_class.SerializeToString,
                )
            else:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    behaviour,
                    request_deserializer=tolerant(getattr(service_pb2, method.input_type.name)),
                    response_serializer=response_class.SerializeToString,
                )
        return handlers

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
        not_loaded = await asyncio.to_thread(self._control.not_loaded_names) if self._control.explicit else ()
        return convert.repository_index_to_grpc(self._core.repository_index(request.ready, not_loaded))

    @rpc
    async def RepositoryModelLoad(self, request, context):
        self._admin.check(context.invocation_metadata())
        # Refuse rather than ignore: a client that sent an override or files must not believe they were applied.
        overrides = sorted(key for key in request.parameters if key == "config" or key.startswith("file:"))
        if overrides:
            raise unimplemented(
                f"RepositoryModelLoad parameters {overrides} are not supported by ipsbench-serve: "
                "models load from the repository as they are there"
            )
        await self._control.load(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(self, request, context):
        self._admin.check(context.invocation_metadata())
        await self._control.unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    @rpc
    async def LogSettings(self, request, context):
        self._admin.check(context.invocation_metadata())
        raise unimplemented("LogSettings is not supported by ipsbench-serve: logging is set on the command line")

    @rpc
    async def TraceSetting(self, request, context):
        self._admin.check(context.invocation_metadata())
        raise unimplemented("TraceSetting is not supported by ipsbench-serve")

    @rpc
    async def ModelInfer(self, request: InferRequestWire, context):
        clock = RequestClock()
        if request.error:
            raise ServerError(grpc.StatusCode.INTERNAL, request.error)
        with self._budget.holding(request.size), self.shared_memory.use() as regions:
            response, in_regions = await self.infer_in_regions(request, regions, clock)
            written = convert.infer_response_to_wire(response, in_regions)
        clock.written()
        return written

    async def infer_in_regions(self, wire: InferRequestWire, regions: RegionUse, clock: RequestClock | None = None):
        """The core's response, outputs that have a shared-memory destination written there (their names);
        ``clock``: see :meth:`InferenceCore.infer`."""
        message = wire.message
        response = await self._core.infer(
            convert.infer_request_from_grpc(message, wire.raw, regions), convert.infer_options_from_grpc(message),
            clock,
        )
        return response, regions.write_outputs(response.outputs)

    # -- shared memory (Triton's extension) ------------------------------------------------------------------------

    @rpc
    async def SystemSharedMemoryStatus(self, request, context):
        return convert.system_shared_memory_status_to_grpc(self.shared_memory.status(SYSTEM, request.name))

    @rpc
    async def SystemSharedMemoryRegister(self, request, context):
        check_local_peer(context.peer())
        await asyncio.to_thread(
            self.shared_memory.register_system, request.name, request.key, request.offset, request.byte_size
        )
        return service_pb2.SystemSharedMemoryRegisterResponse()

    @rpc
    async def SystemSharedMemoryUnregister(self, request, context):
        await asyncio.to_thread(self.shared_memory.unregister, SYSTEM, request.name)
        return service_pb2.SystemSharedMemoryUnregisterResponse()

    @rpc
    async def CudaSharedMemoryStatus(self, request, context):
        return convert.cuda_shared_memory_status_to_grpc(self.shared_memory.status(CUDA, request.name))

    @rpc
    async def CudaSharedMemoryRegister(self, request, context):
        check_local_peer(context.peer())
        await asyncio.to_thread(
            self.shared_memory.register_cuda, request.name, request.raw_handle, request.device_id, request.byte_size
        )
        return service_pb2.CudaSharedMemoryRegisterResponse()

    @rpc
    async def CudaSharedMemoryUnregister(self, request, context):
        await asyncio.to_thread(self.shared_memory.unregister, CUDA, request.name)
        return service_pb2.CudaSharedMemoryUnregisterResponse()

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[InferRequestWire], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        loop = asyncio.get_running_loop()
        responses: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_MAX_OUTSTANDING)
        tasks: set[asyncio.Task] = set()
        end_of_requests = object()
        outstanding = 0
        """Requests read whose response has not been taken from ``responses`` yet."""

        async def answer(request: InferRequestWire) -> None:
            responses.put_nowait(await self._stream_response(request))

        async def read() -> None:
            nonlocal outstanding
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    outstanding += 1
                    task = loop.create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:
                responses.put_nowait(end_of_requests)

        reader = loop.create_task(read())
        reading = True
        try:
            while reading or outstanding:
                item = await responses.get()
                if item is end_of_requests:
                    reading = False
                    continue
                outstanding -= 1
                # A slot is free once its response leaves, not once it is computed: a client that never reads
                # its responses stops the stream's reading instead of piling responses up in the server.
                slots.release()
                yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_response(self, wire: InferRequestWire) -> service_pb2.ModelStreamInferResponse:
        clock = RequestClock()
        request = wire.message
        try:
            if wire.error:
                raise ServerError(grpc.StatusCode.INTERNAL, wire.error)
            with self._budget.holding(wire.size), self.shared_memory.use() as regions:
                response, in_regions = await self.infer_in_regions(wire, regions, clock)
                answer = service_pb2.ModelStreamInferResponse(
                    infer_response=convert.infer_response_to_grpc(response, in_regions)
                )
            clock.written()
            return answer
        except ServerError as exc:
            log.debug("ModelStreamInfer request %r -> %s: %s", request.id[:64], exc.code.name, exc.message)
            message = exc.message
        except Exception:
            request_id = new_request_id()
            log.exception("ModelStreamInfer request failed (request id %s)", request_id)
            message = _internal_message("ModelStreamInfer", request_id)
        return service_pb2.ModelStreamInferResponse(
            error_message=message,
            infer_response=service_pb2.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            ),
        )


def _unsupported(rpc_name: str):
    async def handler(self, request, context: grpc.aio.ServicerContext):
        log.debug("%s -> UNIMPLEMENTED", rpc_name)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc_name} is not supported by ipsbench-serve")

    handler.__name__ = rpc_name
    return handler


for _method in SERVICE.methods:
    if _method.name not in InferenceServicer.__dict__:
        setattr(InferenceServicer, _method.name, _unsupported(_method.name))
