"""A front end's link to the engine process: every RPC a front end does not answer itself goes through it.

Inference goes through the front end's :class:`~ipsbench.server.frontends.ring.Ring`: the request's raw tensors are
copied into a free slot (the one copy on their way to the batch), a frame carries the request's header and names
them, the engine answers with the response's header and its raw outputs written into the same slot, and the slot is
free again once the response has been encoded. Every
other RPC is forwarded as its serialized request and answered with the serialized response, so whichever front end
a client reaches, the engine answers. When the engine process goes away, the requests waiting on it fail with
INTERNAL (``worker stopped unexpectedly``, RELIABILITY F15), new ones get UNAVAILABLE until the link connects again to the engine that replaces it (a new ring each time).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2

from ipsbench.server.errors import LOADING_MESSAGE, SHUTTING_DOWN_MESSAGE, FailureReason, ServerError, unavailable
from ipsbench.server.frontends import messages
from ipsbench.server.frontends.messages import FAILURE, READY, RESULT, STOP, WELCOME
from ipsbench.server.frontends.ring import SLOT_ALIGN, FrontendCounters, Ring, aligned

log = logging.getLogger(__name__)

ENGINE_GONE_MESSAGE = "worker stopped unexpectedly: the engine process exited while serving this request (it restarts)"
ENGINE_DOWN_MESSAGE = "Server is not ready: its engine process is restarting"
RECONNECT_DELAYS_S = (0.02, 0.05, 0.1, 0.2, 0.5)
WRITE_BUFFER_LIMIT = 4 * 1024 * 1024
"""Inline tensors beyond this wait for the socket to drain before the next frame is queued."""


@dataclass(slots=True, eq=False)
class _Pending:
    future: asyncio.Future
    ring: Ring | None
    slot: int | None = None
    abandoned: bool = False
    """The caller gave up (its client cancelled); the slot is freed when the engine's answer arrives."""


@dataclass(slots=True)
class _Connection:
    ring: Ring
    writer: asyncio.StreamWriter
    pending: dict[int, _Pending] = field(default_factory=dict)


class EngineLink:
    """One front end's connection to the engine, kept up for the process's life."""

    def __init__(
        self, socket_path: Path, index: int, slots: int, slot_bytes: int,
        on_ready: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.index = index
        self.slots = slots
        self.slot_bytes = aligned(slot_bytes)
        self.counters = FrontendCounters()
        """The byte budget's counts, mirrored into the current ring's header for the engine's metrics."""
        self.ready = False
        """The server's readiness as the engine last said (False while no engine is connected)."""
        self.live = True
        self._on_ready = on_ready
        self._connection: _Connection | None = None
        self._ids = itertools.count()
        self._stopping = False
        self._closed = False
        self._task: asyncio.Task | None = None
        self.connected = asyncio.Event()

    # -- the connection ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_connected(), name="engine-link")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _keep_connected(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
            except OSError:
                await asyncio.sleep(RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)])
                attempt += 1
                continue
            attempt = 0
            try:
                await self._serve(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                pass
            finally:
                writer.close()
            if not self._closed and not self._stopping:
                log.warning("front end %d: lost the engine process; waiting for it to come back", self.index)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ring = Ring.create(self.slots, self.slot_bytes, f"frontend{self.index}")
        try:
            self.counters.mirror_into(ring)
            writer.write(messages.frame(messages.HELLO, self.index, str(ring.path), self.slots, self.slot_bytes,
                                        os.getpid()))
            kind, ready = await messages.read_frame(reader)
            if kind != WELCOME:
                raise ConnectionError(f"unexpected first message {kind!r} from the engine")
        finally:
            ring.unlink()  # mapped by both ends now (or never to be): no name left behind
        connection = _Connection(ring, writer)
        self._connection = connection
        self.connected.set()
        await self._set_ready(ready)
        try:
            await self._read_answers(reader, connection)
        finally:
            self._connection = None
            self.connected.clear()
            self.counters.mirror_into(None)
            for pending in connection.pending.values():
                if not pending.future.done():
                    pending.future.set_exception(
                        unavailable(SHUTTING_DOWN_MESSAGE) if self._stopping
                        else ServerError(grpc.StatusCode.INTERNAL, ENGINE_GONE_MESSAGE, FailureReason.BACKEND))
            connection.pending.clear()
            await self._set_ready(False)

    async def _read_answers(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        while True:
            message = await messages.read_frame(reader)
            kind = message[0]
            if kind in (RESULT, FAILURE):
                pending = connection.pending.pop(message[1], None)
                if pending is None:
                    continue
                if pending.abandoned or pending.future.done():
                    self._free(pending)
                else:
                    pending.future.set_result(message)
            elif kind == READY:
                await self._set_ready(message[1])
            elif kind == STOP:
                self._stopping = True
                await self._set_ready(False)

    async def _set_ready(self, ready: bool) -> None:
        ready = bool(ready) and not self._stopping
        if ready != self.ready:
            self.ready = ready
            if self._on_ready is not None:
                await self._on_ready(ready)

    def _free(self, pending: _Pending) -> None:
        if pending.slot is not None and pending.ring is not None:
            if self._connection is not None and pending.ring is self._connection.ring:
                pending.ring.release(pending.slot)
            pending.slot = None

    def _current(self) -> _Connection:
        connection = self._connection
        if connection is None:
            if self._stopping:
                raise unavailable(SHUTTING_DOWN_MESSAGE)
            raise unavailable(ENGINE_DOWN_MESSAGE if self.counters.ever_connected else LOADING_MESSAGE)
        return connection

    async def _send(self, connection: _Connection, data: bytes, pending: _Pending, ident: int) -> list:
        connection.pending[ident] = pending
        writer = connection.writer
        writer.write(data)
        if writer.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            await writer.drain()
        try:
            return await pending.future
        except asyncio.CancelledError:
            pending.abandoned = True
            raise

    # -- forwarded RPCs ------------------------------------------------------------------------------------------

    async def call(
        self, method: str, request: bytes, metadata: Sequence[tuple[str, str | bytes]], peer: str
    ) -> bytes:
        """Serialized response of RPC ``method`` as the engine answers it, for the client at ``peer``; raises its
        error as a ServerError."""
        connection = self._current()
        ident = next(self._ids)
        pending = _Pending(asyncio.get_running_loop().create_future(), None)
        answer = await self._send(connection, messages.frame(messages.CALL, ident, method, request,
                                                             [list(item) for item in metadata], peer), pending, ident)
        if answer[0] == FAILURE:
            raise ServerError(grpc.StatusCode[answer[2]], answer[3])
        return answer[2]

    # -- inference -----------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def infer(
        self, message: service_pb2.ModelInferRequest, raw: Sequence[bytes | memoryview]
    ) -> AsyncIterator[tuple[bytes, list[bytes | memoryview]]]:
        """The engine's answer to a request (``message`` without its raw tensors, and those): the response's
        serialized header and its raw output contents, views of the request's slot until the block ends."""
        connection = self._current()
        self.counters.requests_received += 1
        ring = connection.ring
        needed = sum(aligned(len(r)) for r in raw)
        slot = ring.acquire() if needed and needed <= ring.slot_bytes else None
        view = ring.slot(slot) if slot is not None else None
        pending = _Pending(asyncio.get_running_loop().create_future(), ring, slot)
        try:
            ident = next(self._ids)
            data = messages.frame(messages.INFER, ident, slot, message.SerializeToString(),
                                  messages.place(raw, view, SLOT_ALIGN))
            answer = await self._send(connection, data, pending, ident)
        except BaseException:
            if not pending.abandoned:
                self._free(pending)
            raise
        try:
            if answer[0] == FAILURE:
                raise ServerError(grpc.StatusCode[answer[2]], answer[3])
            yield answer[2], messages.taken(answer[3], view)
        finally:
            self._free(pending)
