"""A deserialized TensorRT engine (``model.plan``) with one execution context, run with PyTorch CUDA buffers.

Loading: SHA-256 manifest check (an engine is an opaque binary that may carry plugin code: only plans this project
built are served) → ``trt.Runtime.deserialize_cuda_engine`` → one ``IExecutionContext`` on its own CUDA stream.
Running one batch: inputs copied to the device (cast to the engine's input type there), ``set_input_shape`` for the
batch, output buffers sized from the context's resolved shapes, ``execute_async_v3`` on the stream, outputs copied
back to fresh host memory. TensorRT and PyTorch are imported only when an engine is opened, so this module imports
without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ipsbench.server.repository.checksum import verify_checksum

INSTALL_HINT = "pip install 'ipsbench[tensorrt]' (TensorRT's Python wheel; it needs an NVIDIA GPU and driver)"


class TensorRTUnavailable(RuntimeError):
    """TensorRT, PyTorch's CUDA support or a GPU is missing here."""


def import_runtime(user: str = "the TensorRT backend"):
    """``(tensorrt, torch)``, or :class:`TensorRTUnavailable` saying what ``user`` needs and how to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(f"{user} needs TensorRT, which is not installed: {INSTALL_HINT}") from exc
    try:
        import torch
    except ImportError as exc:
        raise TensorRTUnavailable(f"{user} needs PyTorch for its GPU buffers: pip install 'ipsbench[torch]'") from exc
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(f"{user} needs an NVIDIA GPU; PyTorch sees no usable CUDA device here")
    return tensorrt, torch


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    """With ``-1`` where dynamic (the batch dimension)."""
    max_batch_size: int
    """Largest batch of the optimization profile (0 when the tensor has no dynamic batch dimension)."""


class TensorRTEngine:
    """One engine and execution context; ``run`` is called by one thread at a time."""

    def __init__(self, trt, torch, engine, device_id: int) -> None:
        self._trt = trt
        self._torch = torch
        self._engine = engine
        self._device = torch.device("cuda", device_id)
        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self._stream = torch.cuda.Stream(self._device)
        self.inputs: dict[str, TensorInfo] = {}
        self.outputs: dict[str, TensorInfo] = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            shape = tuple(engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                largest = engine.get_tensor_profile_shape(name, 0)[2][0] if shape and shape[0] == -1 else 0
                self.inputs[name] = TensorInfo(name, dtype, shape, int(largest))
            else:
                self.outputs[name] = TensorInfo(name, dtype, shape, 0)

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs)

    @classmethod
    def open(cls, path: Path, device_id: int = 0) -> TensorRTEngine:
        trt, torch = import_runtime()
        verify_checksum(path)
        count = torch.cuda.device_count()
        if not 0 <= device_id < count:
            raise RuntimeError(f"the engine is meant for GPU {device_id}, but CUDA sees {count} device(s)")
        with torch.cuda.device(device_id):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise RuntimeError(
                    f"TensorRT could not deserialize {path.name}: it was built for another GPU or TensorRT version "
                    f"(this is TensorRT {trt.__version__}); rebuild it here with ipsbench-export --format tensorrt"
                )
            return cls(trt, torch, engine, device_id)

    def _torch_dtype(self, dtype: np.dtype):
        return self._torch.from_numpy(np.empty(0, dtype=dtype)).dtype

    def run(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        context = self._context
        with torch.inference_mode(), torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            keep = []
            for name, info in self.inputs.items():
                array = arrays[name]
                tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self._device, non_blocking=False)
                tensor = tensor.to(self._torch_dtype(info.dtype)).contiguous()
                if not context.set_input_shape(name, tuple(tensor.shape)):
                    raise ValueError(f"TensorRT refused shape {list(tensor.shape)} for input '{name}'")
                context.set_tensor_address(name, tensor.data_ptr())
                keep.append(tensor)
            outputs = {}
            for name, info in self.outputs.items():
                shape = tuple(context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self._torch_dtype(info.dtype), device=self._device)
                context.set_tensor_address(name, outputs[name].data_ptr())
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT failed to run the batch")
            return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}

    def close(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._context = None
        self._engine = None
        self._stream = None
