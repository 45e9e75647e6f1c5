"""The engine process's end of the front ends' links: their requests run on this process's one
:class:`~ipsbench.server.core.InferenceCore`, so batches form across every front end as they would in one process.

Each front end connects once per engine life, says which ring it made, and then sends frames: an inference request
(its tensors in a slot of the ring, read here as views) or any other RPC as serialized bytes, which the process's
own :class:`~ipsbench.server.grpc_service.InferenceServicer` answers through a context that only records how it
ended. The server is ready when the core is and every front end is connected; the front ends hear whenever that
changes. A front end that goes away leaves its requests to finish; their answers are dropped, then its ring unmapped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from tritonclient.grpc import service_pb2

from ipsbench.server import convert
from ipsbench.server.core import InferenceCore
from ipsbench.server.errors import ServerError, new_request_id
from ipsbench.server.frontends import messages
from ipsbench.server.frontends.messages import CALL, FAILURE, HELLO, INFER, READY, RESULT
from ipsbench.server.frontends.ring import COUNTER_FIELDS, LOOP_FIELDS, SLOT_ALIGN, Ring, readings_from
from ipsbench.server.grpc_service import SERVICE, InferenceServicer
from ipsbench.server.loop_monitor import ProcessReadings
from ipsbench.server.stats import RequestClock, ServerStats
from ipsbench.server.wire import InferRequestWire, raw_contents, tolerant

log = logging.getLogger(__name__)

_REQUEST_PARSERS = {m.name: tolerant(getattr(service_pb2, m.input_type.name)) for m in SERVICE.methods}
FORWARDED_METHODS = frozenset(m.name for m in SERVICE.methods) - {"ModelInfer", "ModelStreamInfer"}


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class ForwardedContext:
    """The part of ``grpc.aio.ServicerContext`` the servicer's non-inference RPCs use, for a forwarded call."""

    def __init__(self, metadata: Sequence[tuple[str, str | bytes]], peer: str) -> None:
        self._metadata = tuple(metadata)
        self._peer = peer

    def peer(self) -> str:
        """The client's address as its front end saw it (shared-memory registration is for local clients only)."""
        return self._peer

    def invocation_metadata(self) -> tuple:
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)


@dataclass(eq=False)
class _Frontend:
    index: int
    pid: int
    ring: Ring
    writer: asyncio.StreamWriter
    tasks: set[asyncio.Task] = field(default_factory=set)

    def send(self, *message) -> None:
        if not self.writer.is_closing():
            self.writer.write(messages.frame(*message))


class LinkServer:
    """Accepts ``expected`` front ends on a Unix socket and serves their frames."""

    def __init__(self, core: InferenceCore, servicer: InferenceServicer, expected: int) -> None:
        self.core = core
        self.servicer = servicer
        self.expected = expected
        self.frontends: dict[int, _Frontend] = {}
        self.on_ready_change = None
        """Called with the new readiness whenever :meth:`ready` changes (the engine announces its first ready)."""
        self._server: asyncio.base_events.Server | None = None
        self._last_ready: bool | None = None
        self._stopping = False

    async def start(self, path: Path) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path=str(path))
        path.chmod(0o600)

    def ready(self) -> bool:
        return self.core.ready and not self._stopping and len(self.frontends) == self.expected

    def readiness_changed(self) -> None:
        """Tell every front end the server's readiness if it changed (call after anything that may change it)."""
        ready = self.ready()
        if ready == self._last_ready:
            return
        self._last_ready = ready
        for frontend in list(self.frontends.values()):
            frontend.send(READY, ready)
        if self.on_ready_change is not None:
            self.on_ready_change(ready)

    def readings(self) -> dict[int, ProcessReadings]:
        """Each connected front end's process and loop readings, from its ring."""
        found = {}
        for frontend in list(self.frontends.values()):
            values = frontend.ring.counters
            if values is not None:
                found[frontend.index] = readings_from({name: int(values[COUNTER_FIELDS.index(name)])
                                                       for name in LOOP_FIELDS})
        return found

    def counter(self, name: str) -> dict[int, int]:
        """Each connected front end's count ``name`` (one of :data:`COUNTER_FIELDS`)."""
        index = COUNTER_FIELDS.index(name)
        counts = {}
        for frontend in list(self.frontends.values()):
            values = frontend.ring.counters
            if values is not None:
                counts[frontend.index] = int(values[index])
        return counts

    async def stop(self) -> None:
        """Tell the front ends the server is stopping; stop accepting; close the links."""
        self._stopping = True
        for frontend in list(self.frontends.values()):
            frontend.send(messages.STOP)
            frontend.writer.close()
        if self._server is not None:
            self._server.close()

    # -- one front end -------------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._connection(reader, writer)
        except asyncio.CancelledError:
            pass  # the process is exiting; asyncio would log a cancelled connection task as an error

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            kind, index, ring_path, slots, slot_bytes, pid = await messages.read_frame(reader)
            if not 0 <= index < self.expected:
                raise ConnectionError(f"front end {index} is not one of {self.expected}")
            if kind != HELLO:
                raise ConnectionError(f"unexpected first message {kind!r}")
            ring = Ring.attach(Path(ring_path), slots, slot_bytes)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as exc:
            log.error("a front end could not connect: %s", exc)
            writer.close()
            return
        frontend = _Frontend(index, pid, ring, writer)
        replaced = self.frontends.get(index)
        if replaced is not None:
            replaced.writer.close()
        self.frontends[index] = frontend
        frontend.send(messages.WELCOME, self.ready())
        log.info("front end %d connected (pid %d)", index, pid)
        self.readiness_changed()
        try:
            await self._serve(reader, frontend)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            if self.frontends.get(index) is frontend:
                del self.frontends[index]
            if not self._stopping:
                log.warning("front end %d (pid %d) disconnected", index, pid)
            self.readiness_changed()
            writer.close()
            if frontend.tasks:
                await asyncio.gather(*frontend.tasks, return_exceptions=True)
            ring.close()

    async def _serve(self, reader: asyncio.StreamReader, frontend: _Frontend) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await messages.read_frame(reader)
            kind = message[0]
            if kind == INFER:
                task = loop.create_task(self._infer(frontend, message))
            elif kind == CALL:
                task = loop.create_task(self._call(frontend, message))
            else:
                raise ConnectionError(f"unexpected message {kind!r}")
            frontend.tasks.add(task)
            task.add_done_callback(frontend.tasks.discard)

    async def _infer(self, frontend: _Frontend, message: list) -> None:
        _, ident, slot, header, placed = message
        clock = RequestClock()  # from the frame's receipt: the front end's own work shows as its CPU
        view = frontend.ring.slot(slot) if slot is not None else None
        try:
            wire = InferRequestWire(service_pb2.ModelInferRequest.FromString(header), messages.taken(placed, view))
            # Inputs and outputs that name a client's shared-memory region are read and written here, where the
            # regions are registered (the front ends forward registration).
            with self.servicer.shared_memory.use() as regions:
                response, in_regions = await self.servicer.infer_in_regions(wire, regions, clock)
            del wire  # the slot's views go before the front end may reuse the slot
            payloads = [b"" if o.name in in_regions else raw_contents(o.datatype, o.array) for o in response.outputs]
            answer = [RESULT, ident, convert.response_header(response).SerializeToString(),
                      messages.place(payloads, None if _overlaps(payloads, view) else view, SLOT_ALIGN)]
            clock.written()
        except ServerError as exc:
            answer = [FAILURE, ident, exc.code.name, exc.message]
        except Exception:
            request_id = new_request_id()
            log.exception("ModelInfer failed (request id %s)", request_id)
            answer = [FAILURE, ident, "INTERNAL", f"internal server error (request id {request_id})"]
        frontend.send(*answer)

    async def _call(self, frontend: _Frontend, message: list) -> None:
        _, ident, method, data, metadata, peer = message
        try:
            if method not in FORWARDED_METHODS:
                raise _Aborted(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not supported by ipsbench-serve")
            if method == "ServerReady":
                response = service_pb2.ServerReadyResponse(ready=self.ready())
            else:
                response = await getattr(self.servicer, method)(
                    _REQUEST_PARSERS[method](data), ForwardedContext([tuple(item) for item in metadata], peer)
                )
            answer = [RESULT, ident, response.SerializeToString()]
        except _Aborted as exc:
            answer = [FAILURE, ident, exc.code.name, exc.details]
        frontend.send(*answer)
        if method in ("RepositoryModelLoad", "RepositoryModelUnload"):
            self.readiness_changed()


def _overlaps(payloads: list, view: memoryview | None) -> bool:
    """Whether an output lies in the request's slot (an engine may hand an input back): then the outputs travel in
    the frame rather than being copied over the inputs."""
    if view is None:
        return False
    slot = np.frombuffer(view, dtype=np.uint8)
    return any(np.may_share_memory(np.frombuffer(p, dtype=np.uint8), slot) for p in payloads if len(p))


class SummedServerStats:
    """The engine's :class:`ServerStats` with every connected front end's counters added (for the metrics)."""

    def __init__(self, own: ServerStats, link: LinkServer) -> None:
        self._own = own
        self._link = link

    def __getattr__(self, name: str) -> int:
        value = getattr(self._own, name)
        if name in COUNTER_FIELDS:
            value += sum(self._link.counter(name).values())
        return value


class FrontendCollector:
    """Prometheus families of the front ends: how many are connected, and the requests each has sent."""

    def __init__(self, link: LinkServer) -> None:
        self._link = link

    def collect(self):
        connected = GaugeMetricFamily("ipsbench_frontends_connected",
                                      "Front-end processes connected to the engine now (--frontends wanted).")
        connected.add_metric([], len(self._link.frontends))
        yield connected
        requests = CounterMetricFamily("ipsbench_frontend_requests",
                                       "Inference requests each front-end process has passed to the engine since "
                                       "it started.", labels=["frontend"])
        for index, count in sorted(self._link.counter("requests_received").items()):
            requests.add_metric([str(index)], count)
        yield requests
