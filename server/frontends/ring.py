"""The shared memory between one front-end process and the engine: a ring of preallocated tensor slots.

A front end creates its ring (a file in ``/dev/shm``, mode 0600), the engine maps it when the front end connects,
and the front end removes the file's name as soon as the engine has it mapped, so that no process crash can leave
it behind (the memory lives until both mappings go). A request's raw input tensors are copied once, from the gRPC
message into a free slot; the engine reads them there as numpy views and writes the response's tensors back into
the same slot. The ring's first page holds the front end's counters that the engine's metrics sum
(:class:`FrontendCounters`).
"""

from __future__ import annotations

import mmap
import os
import secrets
import tempfile
from collections import deque
from pathlib import Path

import numpy as np

from ipsbench.server.loop_monitor import LAG_BUCKETS_S, ProcessReadings

HEADER_BYTES = 4096
SLOT_ALIGN = 64
"""Tensors are placed at multiples of this in a slot (numpy and the engines like aligned buffers)."""
SHM_FOLDER = Path("/dev/shm")


def _folder() -> Path:
    return SHM_FOLDER if SHM_FOLDER.is_dir() and os.access(SHM_FOLDER, os.W_OK) else Path(tempfile.gettempdir())


def aligned(size: int) -> int:
    return (size + SLOT_ALIGN - 1) // SLOT_ALIGN * SLOT_ALIGN


def shared_memory_free() -> int:
    """Bytes free in the folder rings live in (``/dev/shm`` is often small in containers)."""
    stats = os.statvfs(_folder())
    return stats.f_bavail * stats.f_frsize


LOOP_FIELDS = (
    "process_cpu_us", "loop_cpu_us", "loop_lag_us", "cpus",
    *(f"loop_lag_ticks_{i}" for i in range(len(LAG_BUCKETS_S) + 1)),
)
"""A front end's :class:`ipsbench.server.loop_monitor.ProcessReadings`, in microseconds and ticks per lag bucket."""
COUNTER_FIELDS = ("inflight_request_bytes", "requests_refused_for_bytes", "requests_received", *LOOP_FIELDS)
"""A front end's counts: the first two are :class:`ipsbench.server.stats.ServerStats`'s that its byte budget keeps,
the third its inference requests sent to the engine, then its process's and event loop's readings."""
_COUNTER_INDEX = {name: index for index, name in enumerate(COUNTER_FIELDS)}


class FrontendCounters:
    """A front end's server-wide counts, mirrored into its current ring's header so that the engine's metrics can
    sum them at any time; :class:`ipsbench.server.admission.ByteBudget` takes it in place of a ``ServerStats``."""

    def __init__(self) -> None:
        object.__setattr__(self, "_values", dict.fromkeys(COUNTER_FIELDS, 0))
        object.__setattr__(self, "_mirror", None)
        object.__setattr__(self, "ever_connected", False)

    def mirror_into(self, ring: Ring | None) -> None:
        """From now on also write the counts into ``ring``'s header (None: nowhere)."""
        mirror = None if ring is None else ring.counters
        if mirror is not None:
            mirror[:] = [self._values[name] for name in COUNTER_FIELDS]
            object.__setattr__(self, "ever_connected", True)
        object.__setattr__(self, "_mirror", mirror)

    def __getattr__(self, name: str) -> int:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: int) -> None:
        index = _COUNTER_INDEX.get(name)
        if index is None:
            raise AttributeError(f"{name} is not a front-end counter")
        self._values[name] = value
        if self._mirror is not None:
            self._mirror[index] = value


def mirror_readings(counters: FrontendCounters, readings: ProcessReadings) -> None:
    """A front end's loop monitor tick: its readings into its counters (and so into its ring)."""
    counters.process_cpu_us = round(readings.process_cpu_s * 1e6)
    counters.loop_cpu_us = round(readings.loop_cpu_s * 1e6)
    counters.loop_lag_us = round(readings.lag_s * 1e6)
    counters.cpus = readings.cpus
    for i, ticks in enumerate(readings.lag_buckets):
        setattr(counters, f"loop_lag_ticks_{i}", ticks)


def readings_from(values: dict[str, int]) -> ProcessReadings:
    """A front end's readings from its counters as the engine reads them (:data:`LOOP_FIELDS` by name)."""
    return ProcessReadings(
        process_cpu_s=values["process_cpu_us"] / 1e6,
        loop_cpu_s=values["loop_cpu_us"] / 1e6,
        lag_buckets=[values[f"loop_lag_ticks_{i}"] for i in range(len(LAG_BUCKETS_S) + 1)],
        lag_s=values["loop_lag_us"] / 1e6,
        cpus=values["cpus"],
    )


class Ring:
    """``slots`` slots of ``slot_bytes`` each, after the header page, in one shared mapping."""

    def __init__(self, path: Path, buffer: mmap.mmap, slots: int, slot_bytes: int, owner: bool) -> None:
        self.path = path
        self.slots = slots
        self.slot_bytes = slot_bytes
        self._mmap = buffer
        self._view = memoryview(buffer)
        self.counters = np.frombuffer(self._view[:HEADER_BYTES], dtype=np.int64, count=len(COUNTER_FIELDS))
        """The front end's counts (:data:`COUNTER_FIELDS`), as it last wrote them."""
        self._free: deque[int] = deque(range(slots)) if owner else deque()

    @classmethod
    def create(cls, slots: int, slot_bytes: int, tag: str) -> Ring:
        """A new ring, its file named after ``tag`` and a random part, readable by this user only."""
        slot_bytes = aligned(slot_bytes)
        path = _folder() / f"ipsbench-{tag}-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = HEADER_BYTES + slots * slot_bytes
            os.ftruncate(fd, size)
            buffer = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return cls(path, buffer, slots, slot_bytes, owner=True)

    @classmethod
    def attach(cls, path: Path, slots: int, slot_bytes: int) -> Ring:
        """The engine's mapping of a front end's ring; the size must be what the front end said."""
        fd = os.open(path, os.O_RDWR)
        try:
            size = HEADER_BYTES + slots * slot_bytes
            if os.fstat(fd).st_size != size:
                raise ValueError(f"ring {path.name} is {os.fstat(fd).st_size} bytes, expected {size}")
            buffer = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(path, buffer, slots, slot_bytes, owner=False)

    def unlink(self) -> None:
        """Remove the file's name; the mappings stay valid."""
        self.path.unlink(missing_ok=True)

    # -- slots -------------------------------------------------------------------------------------------------

    def acquire(self) -> int | None:
        """A free slot's number, or None when every slot is in use (the caller sends inline instead). Slots are
        reused last-freed first, so a ring touches (and the machine backs) only as many as are busy at once."""
        return self._free.pop() if self._free else None  # the last freed: pages already touched

    def release(self, slot: int) -> None:
        self._free.append(slot)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def slot(self, number: int) -> memoryview:
        if not 0 <= number < self.slots:
            raise ValueError(f"slot {number} is outside the ring's {self.slots}")
        start = HEADER_BYTES + number * self.slot_bytes
        return self._view[start:start + self.slot_bytes]

    def close(self) -> None:
        """Unmap, once nothing refers to the slots any more (views still held keep the mapping alive)."""
        self.counters = None  # type: ignore[assignment]
        try:
            self._view.release()
            self._mmap.close()
        except BufferError:
            pass  # a view of a slot is still alive somewhere: the mapping goes with it
