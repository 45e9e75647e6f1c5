"""Registered shared-memory regions (Triton's shared-memory extension): the registry, its bounds, and each request's
use of them.

:class:`SharedMemoryRegistry` owns every region a client registered, system ones (POSIX shared-memory objects mapped
here) and CUDA ones (opened by :mod:`ipsbench.server.cuda_shared_memory`); names share one namespace, as in Triton.
It bounds the number of regions and the bytes mapped at once. A request takes its regions through a
:class:`RegionUse` (a context manager): inputs are read-only memoryviews of the mapping (no copy), outputs are written
into their region once; a region unregistered while a request uses it stays mapped until that request is done.
Texts are Triton's (``src/shared_memory_manager.cc``) where Triton has one.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from ipsbench.server.errors import ServerError, invalid_argument, not_found, quoted
from ipsbench.server.wire import raw_contents

SHM_DIR = "/dev/shm"
"""Where Linux keeps POSIX shared-memory objects: ``shm_open("/name")`` opens ``/dev/shm/name``."""
KEY = re.compile(r"/?(?P<object>[A-Za-z0-9_.-]{1,255})")
"""A plain POSIX shared-memory object name: an optional leading ``/`` and no other one."""
NAME_LIMIT = 255
"""Characters of a region name at most."""
SYSTEM = "system"
CUDA = "cuda"


LOCAL_PEERS = ("ipv4:127.", "ipv6:[::1]", "ipv6:[::ffff:127.", "unix:")
"""gRPC peer strings (``context.peer()``) of clients on this host."""


def check_local_peer(peer: str) -> None:
    """Only a client on this host may register a region: one elsewhere has no business naming this host's shared
    memory (and could otherwise read or overwrite another local process's objects through inference)."""
    if not peer.startswith(LOCAL_PEERS):
        raise ServerError(
            grpc.StatusCode.PERMISSION_DENIED,
            "shared memory regions can be registered only by clients on the server's host, connecting over loopback, "
            f"not by '{quoted(peer)}'",
        )


def _exhausted(message: str) -> ServerError:
    return ServerError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def _invalid_args(name: str) -> ServerError:
    return invalid_argument(f"failed to register shared memory region '{quoted(name)}': invalid args")


class Region:
    """One registered region: ``byte_size`` bytes the server can read and write, and how many requests use it."""

    kind = SYSTEM

    def __init__(self, name: str, byte_size: int) -> None:
        self.name = name
        self.byte_size = byte_size
        self.users = 0
        self.unregistered = False

    def check(self) -> None:
        """Before each use: raise when the region can no longer be used whole."""

    def view(self, offset: int, byte_size: int) -> memoryview:
        raise NotImplementedError

    def read(self, offset: int, byte_size: int):
        """An input's bytes: a read-only view of the mapping (system) or a host copy (CUDA)."""
        return self.view(offset, byte_size).toreadonly()

    def write(self, offset: int, payload) -> None:
        """An output's bytes written into the region, once."""
        self.view(offset, len(payload))[:] = payload

    def close(self) -> None:
        raise NotImplementedError


class SystemRegion(Region):
    """``byte_size`` bytes at ``offset`` of the POSIX shared-memory object ``key``, mapped read-write."""

    def __init__(self, name: str, key: str, offset: int, byte_size: int) -> None:
        super().__init__(name, byte_size)
        self.key = key
        self.offset = offset
        self._fd = _open_object(name, key)
        try:
            size = _object_size(key, self._fd)
            if offset + byte_size > size:
                raise _invalid_args(name)
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            self._skip = offset - start
            self._map = mmap.mmap(self._fd, self._skip + byte_size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        except OSError as exc:
            os.close(self._fd)
            message = f"failed to register shared memory region '{quoted(name)}': {exc.strerror}"
            raise invalid_argument(message) from None
        except BaseException:
            os.close(self._fd)
            raise

    def check(self) -> None:
        # A client that shrinks its object under a mapping would make a read past the end fault; the size is checked
        # again before each request uses the region (the descriptor stays open for this).
        if _object_size(self.key, self._fd) < self.offset + self.byte_size:
            raise invalid_argument(f"Invalid shared memory region: '{quoted(self.key)}'")

    def view(self, offset: int, byte_size: int) -> memoryview:
        start = self._skip + offset
        return memoryview(self._map)[start:start + byte_size]

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:
            pass  # arrays still view it: the mapping goes when the last of them does
        os.close(self._fd)


def _open_object(name: str, key: str) -> int:
    match = KEY.fullmatch(key)
    if match is None or match["object"] in (".", ".."):
        raise invalid_argument(
            f"cannot register shared memory region '{quoted(name)}' - invalid shm key '{quoted(key)}'"
        )
    path = os.path.join(SHM_DIR, match["object"])
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):  # never open a FIFO, a device or a link someone left there
            raise invalid_argument(f"Invalid shared memory region: '{quoted(key)}'")
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        raise invalid_argument(f"Unable to open shared memory region: '{quoted(key)}'") from None


def _object_size(key: str, fd: int) -> int:
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_size < 0:
        raise invalid_argument(f"Invalid shared memory region: '{quoted(key)}'")
    return status.st_size


@dataclass(frozen=True)
class RegionStatus:
    name: str
    kind: str
    byte_size: int
    key: str = ""
    offset: int = 0
    device_id: int = 0


class SharedMemoryRegistry:
    """Every registered region by name, within ``max_regions`` regions and ``max_bytes`` bytes mapped at once."""

    def __init__(self, max_regions: int, max_bytes: int, find_cuda=None) -> None:
        self.max_regions = max_regions
        self.max_bytes = max_bytes
        self._find_cuda = find_cuda
        """Called once, on the first CUDA registration (so that a server without CUDA never imports it): returns
        ``(name, raw_handle, device_id, byte_size) -> Region``, or None where this server has no CUDA."""
        self._cuda_opener = None
        self._regions: dict[str, Region] = {}
        self._mapped_bytes = 0
        self._lock = threading.Lock()

    def _cuda(self):
        if self._find_cuda is not None:
            self._cuda_opener, self._find_cuda = self._find_cuda(), None
        return self._cuda_opener

    @property
    def mapped_bytes(self) -> int:
        """Bytes of every region still mapped, unregistered ones that a request still uses included."""
        return self._mapped_bytes

    # -- register, status, unregister ------------------------------------------------------------------------------

    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._admit(name, byte_size)
        self._insert(name, byte_size, lambda: SystemRegion(name, key, offset, byte_size))

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        opener = self._cuda()
        if opener is None:
            raise ServerError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"failed to register CUDA shared memory region: '{quoted(name)}', GPUs not supported "
                "(this server has no CUDA device or no CUDA runtime)",
            )
        self._admit(name, byte_size)
        self._insert(name, byte_size, lambda: opener(name, raw_handle, device_id, byte_size))

    def _admit(self, name: str, byte_size: int) -> None:
        if not name or len(name) > NAME_LIMIT:
            raise invalid_argument(f"shared memory region name must be 1 to {NAME_LIMIT} characters")
        if byte_size == 0:
            raise _invalid_args(name)
        if name in self._regions:
            raise ServerError(
                grpc.StatusCode.ALREADY_EXISTS, f"shared memory region '{quoted(name)}' already in manager"
            )
        if len(self._regions) >= self.max_regions:
            raise _exhausted(
                f"cannot register shared memory region '{quoted(name)}': {len(self._regions)} regions are registered, "
                f"the most this server allows (--shm-max-regions)"
            )
        if self._mapped_bytes + byte_size > self.max_bytes:
            raise _exhausted(
                f"cannot register shared memory region '{quoted(name)}': {byte_size} more bytes would exceed the "
                f"{self.max_bytes} bytes of shared memory this server maps at most (--shm-max-mb)"
            )

    def _insert(self, name: str, byte_size: int, open_region) -> None:
        with self._lock:
            # Reserved before the (slow) open so that two registrations at once cannot both pass the bounds.
            self._admit(name, byte_size)
            self._mapped_bytes += byte_size
            self._regions[name] = placeholder = _Placeholder(name, byte_size)
        try:
            region = open_region()
        except BaseException:
            with self._lock:
                if self._regions.get(name) is placeholder:
                    del self._regions[name]
                self._mapped_bytes -= byte_size
            raise
        with self._lock:
            if self._regions.get(name) is placeholder:
                self._regions[name] = region
                return
        region.close()  # unregistered while it was being opened
        with self._lock:
            self._mapped_bytes -= byte_size

    def status(self, kind: str, name: str = "") -> list[RegionStatus]:
        with self._lock:
            if name:
                found = self._regions.get(name)
                regions = [] if found is None or isinstance(found, _Placeholder) else [found]
            else:
                regions = list(self._regions.values())
        if name and not regions:
            what = "cuda" if kind == CUDA else "system"
            raise not_found(f"Unable to find {what} shared memory region: '{quoted(name)}'")
        if name and regions[0].kind != kind:
            registered, asked = ("CUDA", "system") if kind == SYSTEM else ("system", "CUDA")
            raise not_found(
                f"The region named '{quoted(name)}' is registered as {registered} shared memory, "
                f"not {asked} shared memory"
            )
        return [_status(r) for r in regions if r.kind == kind and not isinstance(r, _Placeholder)]

    def unregister(self, kind: str, name: str = "") -> None:
        """Unregister ``name`` (every region of ``kind`` when empty); an unknown name is no error, as in Triton."""
        with self._lock:
            names = [name] if name else list(self._regions)
            gone = [self._regions.pop(n) for n in names if n in self._regions and self._regions[n].kind == kind]
            for region in gone:
                region.unregistered = True
            idle = [region for region in gone if not region.users]
        for region in idle:
            self._close(region)

    def close(self) -> None:
        """At shutdown: every region unregistered."""
        self.unregister(SYSTEM)
        self.unregister(CUDA)

    def _close(self, region: Region) -> None:
        if isinstance(region, _Placeholder):
            return  # its registration closes what it opens
        region.close()
        with self._lock:
            self._mapped_bytes -= region.byte_size

    # -- use by requests -------------------------------------------------------------------------------------------

    @contextmanager
    def use(self) -> Iterator[RegionUse]:
        """Around one request: the regions it takes stay mapped until it is done."""
        use = RegionUse(self)
        try:
            yield use
        finally:
            if use.regions:  # most requests take none: no lock for them
                self._release(use)

    def _release(self, use: RegionUse) -> None:
        with self._lock:
            for region in use.regions:
                region.users -= 1
            done = [r for r in set(use.regions) if r.users == 0 and r.unregistered]
        for region in done:
            self._close(region)

    def _take(self, name: str, offset: int, byte_size: int) -> Region:
        """Triton's checks of a tensor's (region, offset, byte size), the region counted in use."""
        with self._lock:
            region = self._regions.get(name)
            if region is None or isinstance(region, _Placeholder):
                raise not_found(f"Unable to find shared memory region: '{quoted(name)}'")
            if offset < 0 or offset >= region.byte_size:
                raise invalid_argument(f"Invalid offset for shared memory region: '{quoted(name)}'")
            if byte_size < 0 or offset + byte_size > region.byte_size:
                raise invalid_argument(f"Invalid offset + byte size for shared memory region: '{quoted(name)}'")
            region.check()
            region.users += 1
            return region


class _Placeholder(Region):
    """A name reserved while its region opens."""

    def close(self) -> None:
        pass


def _status(region: Region) -> RegionStatus:
    return RegionStatus(
        region.name, region.kind, region.byte_size,
        key=getattr(region, "key", ""), offset=getattr(region, "offset", 0), device_id=getattr(region, "device_id", 0),
    )


@dataclass(frozen=True)
class OutputTarget:
    """Where one output goes: ``byte_size`` bytes at ``offset`` of ``region``."""

    name: str
    region: Region
    offset: int
    byte_size: int


class RegionUse:
    """The regions of one request: its inputs' bytes and its outputs' destinations."""

    def __init__(self, registry: SharedMemoryRegistry) -> None:
        self._registry = registry
        self.regions: list[Region] = []
        self.outputs: dict[str, OutputTarget] = {}

    def input(self, region_name: str, offset: int, byte_size: int):
        region = self._registry._take(region_name, offset, byte_size)
        self.regions.append(region)
        return region.read(offset, byte_size)

    def output(self, tensor: str, region_name: str, offset: int, byte_size: int) -> None:
        region = self._registry._take(region_name, offset, byte_size)
        self.regions.append(region)
        self.outputs[tensor] = OutputTarget(tensor, region, offset, byte_size)

    def write_output(self, target: OutputTarget, payload) -> None:
        """``payload`` (the output's raw contents) into its region, once; Triton's text when it does not fit."""
        if len(payload) > target.byte_size:
            raise invalid_argument(
                f"shared memory size specified with the request for output '{quoted(target.name)}' "
                f"({target.byte_size} bytes) should be at least {len(payload)} bytes to hold the results"
            )
        target.region.write(target.offset, payload)

    def write_outputs(self, outputs) -> set[str]:
        """Each output that has a destination written there (``outputs``: the response's
        :class:`~ipsbench.server.dataplane.OutputTensor`\\ s); the names written."""
        written = set()
        for output in outputs:
            target = self.outputs.get(output.name)
            if target is not None:
                self.write_output(target, raw_contents(output.datatype, output.array))
                written.add(output.name)
        return written
