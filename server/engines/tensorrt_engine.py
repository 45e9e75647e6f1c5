"""A deserialized TensorRT engine (``model.plan``) with one execution context, run with CUDA runtime buffers.

Written against TensorRT 11's Python API. Device memory and the stream come from the CUDA runtime through
``cuda.bindings`` (NVIDIA's cuda-python, a few MB), not from PyTorch, so the server image serves plans without a
PyTorch install.

Loading: SHA-256 manifest check (an engine is an opaque binary that may carry plugin code: only plans this project
built are served) → ``trt.Runtime.deserialize_cuda_engine`` → one ``IExecutionContext`` on its own CUDA stream.
Running one batch: inputs cast on the host to the engine's input types and copied to device buffers (kept and grown
as batches need), ``set_input_shape`` for the batch, output buffers sized from the context's resolved shapes,
``execute_async_v3`` on the stream, outputs copied back into fresh host arrays. TensorRT and cuda-python are
imported only when an engine is opened, so this module imports without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ipsbench.server.repository.checksum import verify_checksum

INSTALL_HINT = "pip install 'ipsbench[tensorrt]' (TensorRT's Python wheel; it needs an NVIDIA GPU and driver)"
TENSORRT_MAJOR = 11


class TensorRTUnavailable(RuntimeError):
    """TensorRT, the CUDA runtime bindings or a GPU is missing here."""


def _cuda_error(cudart, error) -> str:
    _, name = cudart.cudaGetErrorName(error)
    return name.decode() if isinstance(name, bytes) else str(name)


def import_runtime(user: str = "the TensorRT backend"):
    """``(tensorrt, cuda.bindings.runtime)``, or :class:`TensorRTUnavailable` saying what ``user`` needs and how
    to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(f"{user} needs TensorRT, which is not installed: {INSTALL_HINT}") from exc
    major = str(getattr(tensorrt, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) != TENSORRT_MAJOR:
        raise TensorRTUnavailable(
            f"{user} is written for TensorRT {TENSORRT_MAJOR} (strongly typed networks); this is TensorRT "
            f"{getattr(tensorrt, '__version__', '?')}: {INSTALL_HINT}"
        )
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"{user} needs NVIDIA's CUDA runtime bindings (cuda-python) for its GPU buffers: {INSTALL_HINT}"
        ) from exc
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess or not count:
        why = _cuda_error(cudart, error) if error != cudart.cudaError_t.cudaSuccess else "no devices"
        raise TensorRTUnavailable(f"{user} needs an NVIDIA GPU; the CUDA runtime sees none here ({why})")
    return tensorrt, cudart


class _Cuda:
    """CUDA runtime calls that raise instead of returning error codes."""

    def __init__(self, cudart) -> None:
        self.rt = cudart

    def __call__(self, what: str, result):
        error, *values = result
        if error != self.rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA {what} failed: {_cuda_error(self.rt, error)}")
        return values[0] if len(values) == 1 else tuple(values) or None


class _DeviceBuffers:
    """One device allocation per tensor name, reused across batches and grown when a batch needs more."""

    def __init__(self, cuda: _Cuda) -> None:
        self._cuda = cuda
        self._held: dict[str, tuple[int, int]] = {}

    def get(self, name: str, nbytes: int) -> int:
        nbytes = max(nbytes, 1)  # TensorRT wants an address even for an empty tensor
        pointer, size = self._held.get(name, (0, 0))
        if size >= nbytes:
            return pointer
        if pointer:
            del self._held[name]  # forgotten first: a failed allocation below must not leave it to be freed twice
            self._cuda("cudaFree", self._cuda.rt.cudaFree(pointer))
        pointer = int(self._cuda("cudaMalloc", self._cuda.rt.cudaMalloc(nbytes)))
        self._held[name] = (pointer, nbytes)
        return pointer

    def free(self) -> None:
        held, self._held = self._held, {}
        for pointer, _ in held.values():
            self._cuda("cudaFree", self._cuda.rt.cudaFree(pointer))


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    """With ``-1`` where dynamic (the batch dimension)."""
    max_batch_size: int
    """Largest batch of the optimization profile (0 when the tensor has no dynamic batch dimension)."""


def numpy_dtype(trt, trt_dtype, name: str) -> np.dtype:
    """The numpy type of an engine tensor's TensorRT type; ``ValueError`` for types numpy lacks (BF16, FP8, ...)."""
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except TypeError as exc:
        raise ValueError(
            f"engine tensor '{name}' is {getattr(trt_dtype, 'name', trt_dtype)}, which has no numpy type to serve "
            "it with: keep the graph's inputs and outputs FP32, FP16 or an integer type (cast at the edges)"
        ) from exc


class TensorRTEngine:
    """One engine and execution context; ``run`` is called by one thread at a time."""

    def __init__(self, trt, cudart, engine, device_id: int) -> None:
        self._trt = trt
        self._cuda = _Cuda(cudart)
        self._engine = engine
        self._device_id = device_id
        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self.inputs: dict[str, TensorInfo] = {}
        self.outputs: dict[str, TensorInfo] = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            shape = tuple(engine.get_tensor_shape(name))
            dtype = numpy_dtype(trt, engine.get_tensor_dtype(name), name)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                # (min, opt, max) shapes of profile 0, the only profile the exporter builds
                largest = engine.get_tensor_profile_shape(name, 0)[2][0] if shape and shape[0] == -1 else 0
                self.inputs[name] = TensorInfo(name, dtype, shape, int(largest))
            else:
                self.outputs[name] = TensorInfo(name, dtype, shape, 0)
        self._stream = self._cuda(
            "cudaStreamCreateWithFlags", cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)
        )
        self._buffers = _DeviceBuffers(self._cuda)

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs)

    @classmethod
    def open(cls, path: Path, device_id: int = 0) -> TensorRTEngine:
        trt, cudart = import_runtime()
        verify_checksum(path)
        cuda = _Cuda(cudart)
        count = cuda("cudaGetDeviceCount", cudart.cudaGetDeviceCount())
        if not 0 <= device_id < count:
            raise RuntimeError(f"the engine is meant for GPU {device_id}, but CUDA sees {count} device(s)")
        cuda("cudaSetDevice", cudart.cudaSetDevice(device_id))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise RuntimeError(
                f"TensorRT could not deserialize {path.name}: it was built for another GPU or TensorRT version "
                f"(this is TensorRT {trt.__version__}); rebuild it here with ipsbench-export --format tensorrt"
            )
        return cls(trt, cudart, engine, device_id)

    def _bind(self, name: str, device: int) -> None:
        if not self._context.set_tensor_address(name, device):
            raise RuntimeError(f"TensorRT refused the device buffer of tensor '{name}'")

    def run(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda, rt, context = self._cuda, self._cuda.rt, self._context
        # The current device is per host thread, and an instance's batches may run on any thread of its pool.
        cuda("cudaSetDevice", rt.cudaSetDevice(self._device_id))
        to_device, to_host = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        staged = []  # host inputs stay alive until the stream is done with them
        for name, info in self.inputs.items():
            host = np.ascontiguousarray(arrays[name], dtype=info.dtype)
            if not context.set_input_shape(name, tuple(host.shape)):
                raise ValueError(f"TensorRT refused shape {list(host.shape)} for input '{name}'")
            device = self._buffers.get(name, host.nbytes)
            cuda("cudaMemcpyAsync", rt.cudaMemcpyAsync(device, host.ctypes.data, host.nbytes, to_device, self._stream))
            self._bind(name, device)
            staged.append(host)
        outputs: dict[str, tuple[np.ndarray, int]] = {}
        for name, info in self.outputs.items():
            host = np.empty(tuple(context.get_tensor_shape(name)), dtype=info.dtype)
            device = self._buffers.get(name, host.nbytes)
            self._bind(name, device)
            outputs[name] = (host, device)
        if not context.execute_async_v3(int(self._stream)):
            cuda("cudaStreamSynchronize", rt.cudaStreamSynchronize(self._stream))
            raise RuntimeError("TensorRT failed to run the batch")
        for host, device in outputs.values():
            cuda("cudaMemcpyAsync", rt.cudaMemcpyAsync(host.ctypes.data, device, host.nbytes, to_host, self._stream))
        cuda("cudaStreamSynchronize", rt.cudaStreamSynchronize(self._stream))
        del staged
        return {name: host for name, (host, _) in outputs.items()}

    def close(self) -> None:
        if self._stream is None:
            return
        rt = self._cuda.rt
        self._cuda("cudaSetDevice", rt.cudaSetDevice(self._device_id))
        self._cuda("cudaStreamSynchronize", rt.cudaStreamSynchronize(self._stream))
        # The context before the engine, and both before the memory they were bound to.
        self._context = None
        self._engine = None
        self._buffers.free()
        self._cuda("cudaStreamDestroy", rt.cudaStreamDestroy(self._stream))
        self._stream = None
