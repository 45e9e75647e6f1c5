"""A TorchScript module prepared for one device: positional numpy arrays (or device tensors) in, numpy arrays of the
wire types out.

TorchScript files are programs, not data: ``torch.jit.load`` runs what the file contains. The model repository must
be trusted, as Triton's documentation says of its own PyTorch backend; in addition, a file is loaded only when it
matches the SHA-256 manifest written next to it (:mod:`ipsbench.server.repository.checksum`).

Loading: checksum → ``torch.jit.load(map_location=device)`` → eval → FP16 (``precision fp16``) →
channels-last → ``torch.jit.freeze`` (weights become constants, Conv+BatchNorm fold). Freezing comes last because a
frozen module has no parameters left for ``.half()`` or ``.to()`` to convert; that is also why the exporter does not
freeze.

Running on CUDA: each engine has its own stream; inputs are copied (by PyTorch's multi-threaded copy, ten times
faster than numpy's for a batch of images) into a pinned host buffer that is reused, sent to the device with
``non_blocking=True``, cast and laid out there; outputs are cast back to the configured type on the
device and copied to fresh host memory (``.cpu()`` waits for the stream), so returned arrays never alias a buffer
that the next batch overwrites. A torch tensor already on the engine's device (a front's GPU preprocessing) skips
the host entirely: the engine's stream waits for the calling thread's current stream, which made it, and uses it in
place. Everything runs under ``torch.inference_mode()``; PyTorch releases the GIL inside.

Recent PyTorch releases flag TorchScript as deprecated in favour of ``torch.export``; it is still the format Triton's
PyTorch backend serves (``model.pt``), so those warnings are silenced at these call sites only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ipsbench.server.repository.checksum import verify_checksum
from ipsbench.server.engines.cuda_graphs import GraphSet
from ipsbench.server.engines.torch_options import TorchOptions

log = logging.getLogger(__name__)

_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


@dataclass(frozen=True)
class EngineLayout:
    """What ``forward()`` takes and returns, by position."""

    sample_shapes: tuple[tuple[int, ...], ...]
    """Per input, dims of one sample (without the batch dimension); ``-1`` where variable."""
    input_dtypes: tuple[np.dtype, ...]
    output_dtypes: tuple[np.dtype, ...]
    """Wire type of each returned tensor, in the order ``forward()`` returns them."""
    max_batch_size: int
    """0: the inputs have no batch dimension."""


@contextlib.contextmanager
def quiet_jit_deprecation() -> Iterator[None]:
    with warnings.catch_warnings():
        # FutureWarning in recent PyTorch, DeprecationWarning in earlier ones: match the text, not the class.
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION)
        yield


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def load_module(path: Path, device: torch.device, options: TorchOptions) -> torch.jit.ScriptModule:
    """The TorchScript file at ``path`` on ``device``, converted as ``options`` ask and frozen."""
    verify_checksum(path)
    with quiet_jit_deprecation():
        module = torch.jit.load(str(path), map_location=device)
    module.eval()
    if options.precision == "fp16":
        module.half()
    if options.channels_last:
        module.to(memory_format=torch.channels_last)
    with quiet_jit_deprecation():
        return torch.jit.freeze(module)


def forward_argument_names(module: torch.jit.ScriptModule) -> list[str]:
    """Names of ``forward()``'s arguments after ``self``."""
    return [argument.name for argument in module.forward.schema.arguments[1:]]


def configure_process(device: torch.device, options: TorchOptions) -> None:
    """Process-wide PyTorch settings an engine relies on."""
    _accept_read_only_arrays()
    if options.inference_threads is not None and torch.get_num_threads() != options.inference_threads:
        log.info("PyTorch intra-op threads: %d (process-wide)", options.inference_threads)
        torch.set_num_threads(options.inference_threads)
    if device.type == "cuda":
        # Fixed shapes per batch size: let cuDNN pick the fastest kernels. Strict FP32 unless FP16 is asked for.
        torch.backends.cudnn.benchmark = True
        if options.precision == "fp32":
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False


def _accept_read_only_arrays() -> None:
    """Request inputs arrive as read-only numpy views of the received bytes. The engine wraps them with
    ``torch.from_numpy`` only to copy them (PyTorch's copy is multi-threaded), so a model never writes into them.
    PyTorch warns once per process about wrapping a non-writable array; that one warning is raised here, silenced,
    when a model loads, instead of on the first request."""
    read_only = np.zeros(1, dtype=np.float32)
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        torch.from_numpy(read_only)


def _cpu_tensor(array: np.ndarray) -> torch.Tensor:
    """The array as a tensor: shared when writable (a batch the server assembled), copied when read-only."""
    tensor = torch.from_numpy(array)
    return tensor if array.flags.writeable else tensor.clone()


class TorchEngine:
    """One prepared module. ``run`` is called by one thread at a time."""

    def __init__(
        self, module: torch.jit.ScriptModule, device: torch.device, options: TorchOptions, layout: EngineLayout
    ) -> None:
        self.device = device
        self.options = options
        self.layout = layout
        self._module = module
        self._half = options.precision == "fp16"
        self._channels_last = options.channels_last
        self._output_dtypes = [torch_dtype(d) for d in layout.output_dtypes]
        self._cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self._cuda else None
        self._staging: list[torch.Tensor | None] = [None] * len(layout.sample_shapes)
        self._staging_hint = [
            layout.max_batch_size * math.prod(shape) if all(d > 0 for d in shape) else 0
            for shape in layout.sample_shapes
        ]
        self._graphs: GraphSet | None = None
        self.device_batches = 0
        """Batches whose inputs arrived as tensors on this engine's CUDA device (used there, no host round trip)."""
        if options.cuda_graphs:
            if not self._cuda:
                raise ValueError("CUDA graphs need a CUDA device")
            if layout.max_batch_size < 1:
                raise ValueError("parameter 'cuda_graphs' needs max_batch_size > 0")
            self._graphs = GraphSet(
                self.forward,
                self._stream,
                device,
                layout.sample_shapes,
                [torch_dtype(d) for d in layout.input_dtypes],
                layout.max_batch_size,
            )
            with torch.inference_mode():
                self._graphs.capture_all()

    @classmethod
    def open(cls, path: Path, device: torch.device, options: TorchOptions, layout: EngineLayout) -> TorchEngine:
        """Load ``path`` for ``device`` (see :func:`load_module`) and prepare it to run ``layout``."""
        options.check_device(device.type)
        configure_process(device, options)
        return cls(load_module(path, device, options), device, options, layout)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Device tensors in the wire types → device tensors in the wire types (cast and laid out in between)."""
        prepared = []
        for tensor in inputs:
            dtype = torch.float16 if self._half and tensor.is_floating_point() else tensor.dtype
            layout = torch.channels_last if self._channels_last and tensor.dim() == 4 else torch.preserve_format
            prepared.append(tensor.to(dtype=dtype, memory_format=layout))  # one kernel, or none when unchanged
        result = self._module(*prepared)
        outputs = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(outputs) != len(self._output_dtypes) or not all(isinstance(o, torch.Tensor) for o in outputs):
            raise RuntimeError(
                f"the model returned {len(outputs)} value(s); the config declares {len(self._output_dtypes)} "
                "output tensor(s)"
            )
        return [output.to(dtype) for output, dtype in zip(outputs, self._output_dtypes)]

    def run(self, arrays: Sequence[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
        """One batch: arrays in ``forward()`` order → arrays in the order ``forward()`` returns them.

        An input may also be a torch tensor (a front's GPU preprocessing): on this engine's CUDA device it is used
        where it is, with no copy through host memory (counted in :attr:`device_batches`); anywhere else it is
        moved to the device as a host array would be."""
        with torch.inference_mode():
            if not self._cuda:
                inputs = [_cpu_tensor(array) if isinstance(array, np.ndarray) else array.cpu() for array in arrays]
                return [output.numpy() for output in self.forward(inputs)]
            on_device = any(isinstance(a, torch.Tensor) and a.device == self.device for a in arrays)
            if on_device:
                self.device_batches += 1
                # The tensors were made (or merged) on this thread's current stream: this engine's stream waits.
                self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                try:
                    sources = [self._source(index, array) for index, array in enumerate(arrays)]
                    if self._graphs is not None:
                        outputs = self._graphs.run(sources)
                    else:
                        outputs = self.forward([source.to(self.device, non_blocking=True) for source in sources])
                    # .cpu() waits for this stream: the inputs are no longer read when run returns.
                    return [output.cpu().numpy() for output in outputs]
                except BaseException:
                    self._stream.synchronize()  # no copy may still read the staging buffers
                    raise

    def _source(self, index: int, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """An input ready to copy to (or use on) the device: a device tensor as it is, a host array staged."""
        if isinstance(array, torch.Tensor):
            return array if array.device == self.device else array.to(self.device, non_blocking=True)
        return self._stage(index, array)

    def _stage(self, index: int, array: np.ndarray) -> torch.Tensor:
        """``array`` copied into this input's pinned host buffer (grown when needed); a view of that buffer."""
        dtype = torch_dtype(array.dtype)
        staging = self._staging[index]
        if staging is None or staging.dtype != dtype or staging.numel() < array.size:
            staging = torch.empty(max(array.size, self._staging_hint[index]), dtype=dtype, pin_memory=True)
            self._staging[index] = staging
        host = staging[: array.size].view(array.shape)
        host.copy_(torch.from_numpy(array))  # a parallel copy over the intra-op threads; np.copyto uses one
        return host

    def close(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        if self._graphs is not None:
            self._graphs.close()
        self._graphs = None
        self._staging = []
        self._module = None
