"""CUDA shared-memory regions: a client's CUDA IPC handle opened on this server's GPU (Triton's CudaSharedMemory RPCs).

Written against NVIDIA's CUDA Python bindings (``cuda.bindings.runtime`` and ``.driver``, which PyTorch's CUDA wheels
install and which ``tritonclient.utils.cuda_shared_memory`` itself uses): ``cudaIpcOpenMemHandle`` maps the client's
allocation, ``cuMemGetAddressRange`` bounds it, ``cudaMemcpy`` moves an input to the host (the engines here take host
arrays: one copy, as Triton makes for a CPU backend) and an output into the region (once), and
``cudaIpcCloseMemHandle`` releases it. :func:`cuda_opener` is None where there is no CUDA runtime or device; the
registry then answers CudaSharedMemoryRegister UNIMPLEMENTED.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading

import numpy as np

from ipsbench.server.errors import invalid_argument, new_request_id, quoted
from ipsbench.server.shared_memory import CUDA, Region

log = logging.getLogger(__name__)

IPC_HANDLE_BYTES = 64
"""``CUDA_IPC_HANDLE_SIZE``: the bytes of a ``cudaIpcMemHandle_t``."""


def cuda_opener():
    """``(name, raw_handle, device_id, byte_size) -> Region`` on this machine's GPUs, or None without CUDA."""
    try:
        from cuda.bindings import driver, runtime
    except ImportError:
        return None
    try:
        err, count = runtime.cudaGetDeviceCount()
    except Exception:  # a broken installation is no CUDA either; say why once
        log.warning("CUDA shared memory disabled: the CUDA runtime did not answer", exc_info=True)
        return None
    if err != runtime.cudaError_t.cudaSuccess or not count:
        return None
    return functools.partial(CudaRegion, runtime, driver, count)


def _registration_refused(name: str):
    return invalid_argument(f"failed to register shared memory region '{quoted(name)}': invalid args")


class CudaRegion(Region):
    """``byte_size`` bytes of device memory a client exported, opened on ``device_id``."""

    kind = CUDA

    def __init__(self, runtime, driver, device_count: int, name: str, raw_handle: bytes, device_id: int,
                 byte_size: int) -> None:
        super().__init__(name, byte_size)
        self.device_id = device_id
        self._rt = runtime
        self._lock = threading.Lock()
        if len(raw_handle) != IPC_HANDLE_BYTES or not 0 <= device_id < device_count:
            raise _registration_refused(name)
        handle = runtime.cudaIpcMemHandle_t()
        ctypes.memmove(handle.getPtr(), bytes(raw_handle), IPC_HANDLE_BYTES)
        self._call(runtime.cudaSetDevice, device_id, what=name)
        err, pointer = runtime.cudaIpcOpenMemHandle(handle, runtime.cudaIpcMemLazyEnablePeerAccess)
        if err != runtime.cudaError_t.cudaSuccess:
            log.error("cannot open the CUDA IPC handle of region %r: %s", quoted(name), err)
            raise _registration_refused(name)
        self._pointer = int(pointer)
        result, _base, size = driver.cuMemGetAddressRange(driver.CUdeviceptr(self._pointer))
        if result != driver.CUresult.CUDA_SUCCESS or byte_size > int(size):
            runtime.cudaIpcCloseMemHandle(self._pointer)
            raise _registration_refused(name)

    def _call(self, function, *args, what: str):
        err, *rest = function(*args)
        if err != self._rt.cudaError_t.cudaSuccess:
            request_id = new_request_id()
            log.error("CUDA call %s failed for region %r (request id %s): %s", function.__name__, what, request_id, err)
            raise invalid_argument(f"CUDA shared memory region '{quoted(what)}' failed (request id {request_id})")
        return rest

    def read(self, offset: int, byte_size: int) -> memoryview:
        host = np.empty(byte_size, np.uint8)
        with self._lock:
            self._call(self._rt.cudaSetDevice, self.device_id, what=self.name)
            self._call(self._rt.cudaMemcpy, host.ctypes.data, self._pointer + offset, byte_size,
                       self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, what=self.name)
        return memoryview(host).toreadonly()

    def write(self, offset: int, payload) -> None:
        source = np.frombuffer(payload, np.uint8)
        with self._lock:
            self._call(self._rt.cudaSetDevice, self.device_id, what=self.name)
            self._call(self._rt.cudaMemcpy, self._pointer + offset, source.ctypes.data, source.size,
                       self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, what=self.name)

    def close(self) -> None:
        (err,) = self._rt.cudaIpcCloseMemHandle(self._pointer)
        if err != self._rt.cudaError_t.cudaSuccess:
            log.error("failed to close CUDA IPC handle of region %r: %s", quoted(self.name), err)
