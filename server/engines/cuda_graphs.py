"""CUDA graphs for a PyTorch engine: one captured graph per batch-size bucket, replayed with static buffers.

A batch of ``n`` samples runs in the graph of the smallest bucket ``>= n`` (the powers of two up to
``max_batch_size``, and ``max_batch_size`` itself): its inputs are copied into the first ``n`` rows of the static
input buffers and the first ``n`` rows of the static outputs are returned. The remaining rows hold stale samples
whose results are discarded, so a batch of 5 costs what a batch of 8 costs, and the number of graphs (and of
memory pools to keep) stays at about log2(max_batch_size). This assumes samples do not interact within a batch,
which holds for classifiers in eval mode.

Every bucket is captured when the model loads, largest first, into one memory pool the graphs share (they never
run concurrently: one instance runs one batch at a time on its own stream). Capturing while serving would stall a
batch and could race with other instances' CUDA calls. Before each capture the forward pass runs a few times on the
engine's stream, so cuDNN autotuning and TorchScript's fusion compilers finish outside the capture.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

WARMUP_ITERATIONS = 5
"""Forward passes before each capture: enough for the profiling executor to profile, specialize and compile
for the new shape."""


def bucket_sizes(max_batch_size: int) -> list[int]:
    """Batch sizes that get a graph: 1, 2, 4, ... below ``max_batch_size``, and ``max_batch_size``."""
    if max_batch_size < 1:
        raise ValueError("CUDA graphs need max_batch_size >= 1")
    sizes = [1 << k for k in range(max_batch_size.bit_length()) if (1 << k) < max_batch_size]
    return [*sizes, max_batch_size]


class GraphSet:
    """The captured graphs of one engine; ``run`` is called on the engine's stream, one batch at a time."""

    def __init__(
        self,
        forward: Callable[[list[torch.Tensor]], list[torch.Tensor]],
        stream: torch.cuda.Stream,
        device: torch.device,
        sample_shapes: Sequence[tuple[int, ...]],
        input_dtypes: Sequence[torch.dtype],
        max_batch_size: int,
    ) -> None:
        for shape in sample_shapes:
            if any(d < 1 for d in shape):
                raise ValueError(f"CUDA graphs need fixed input dims; got {list(shape)}")
        self._forward = forward
        self._stream = stream
        self._device = device
        self._buckets = bucket_sizes(max_batch_size)
        self._bucket_for = [0] + [next(b for b in self._buckets if b >= n) for n in range(1, max_batch_size + 1)]
        self._static_inputs = [
            torch.zeros((max_batch_size, *shape), dtype=dtype, device=device)
            for shape, dtype in zip(sample_shapes, input_dtypes)
        ]
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, list[torch.Tensor]]] = {}
        self._pool = None

    @property
    def buckets(self) -> list[int]:
        return list(self._buckets)

    def capture_all(self) -> None:
        """Capture every bucket, largest first (the first capture sizes the shared pool)."""
        started = time.perf_counter()
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            self._pool = torch.cuda.graph_pool_handle()
            for batch in sorted(self._buckets, reverse=True):
                self._capture(batch)
        log.info(
            "captured %d CUDA graph(s) for batch sizes %s in %.2f s",
            len(self._graphs),
            self._buckets,
            time.perf_counter() - started,
        )

    def _capture(self, batch: int) -> None:
        inputs = [buffer[:batch] for buffer in self._static_inputs]
        for _ in range(WARMUP_ITERATIONS):
            self._forward(inputs)
        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"):
            outputs = self._forward(inputs)
        for output in outputs:
            if output.dim() == 0 or output.shape[0] != batch:
                raise RuntimeError(
                    f"CUDA graphs need outputs with the batch dimension first; got shape {list(output.shape)} "
                    f"for a batch of {batch}"
                )
        self._graphs[batch] = (graph, outputs)

    def run(self, host_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Copy the (pinned, host) inputs in, replay the bucket's graph, return views of its static outputs.

        The views are overwritten by the next replay: copy them out (``.cpu()``) before the next call.
        """
        batch = host_inputs[0].shape[0]
        if not 0 < batch < len(self._bucket_for):
            raise ValueError(f"batch of {batch} is outside 1..{len(self._bucket_for) - 1} for CUDA graphs")
        for static, host in zip(self._static_inputs, host_inputs):
            static[:batch].copy_(host, non_blocking=True)
        graph, outputs = self._graphs[self._bucket_for[batch]]
        graph.replay()
        return [output[:batch] for output in outputs]

    def close(self) -> None:
        self._graphs.clear()
        self._static_inputs = []
        self._pool = None

