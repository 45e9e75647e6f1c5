"""The preprocessing stage of a front model: client-facing input → engine tensor, off the event loop.

Runs between validation and the batcher, for models whose spec has a front (decided once, when the model is
loaded: a model without one has no stage). The images of a request are split into as many slices as the decode
pool has threads (at most one per image), each slice decoded and written straight into its rows of the one output
tensor; the decoders and numpy release the GIL, so slices run in parallel on several cores. The pool belongs to the
server process (:class:`DecodePool`), each stage to its loaded model version.

Where the version's :class:`~ipsbench.server.preprocess.placement.Placement` says ``gpu``, a request's images go to
one :class:`~ipsbench.server.preprocess.gpu.DevicePreprocessor` call instead (in the same pool, off the event loop),
which decodes them together on the device.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ipsbench.server.dataplane import ModelInputs
from ipsbench.server.errors import ServerError, invalid_argument
from ipsbench.server.model_spec import ModelSpec, PreprocessSpec
from ipsbench.server.preprocess.decode import DecodeLimits, ImageDecodeError, ImageProblem, ImageTooLargeError
from ipsbench.server.preprocess.image import cropped_pixels
from ipsbench.server.preprocess.placement import Placement
from ipsbench.server.preprocess.transform import Normalizer
from ipsbench.server.stats import PreprocessStats

MAX_DECODE_THREADS = 16


class Preprocessor:
    """Turns one front's client-facing array into its engine tensor (synchronous; thread-safe)."""

    def __init__(self, front: PreprocessSpec, decoder: str | None = None) -> None:
        self.front = front
        self.decoder = decoder
        self.limits = DecodeLimits(front.max_pixels, front.max_image_bytes)
        self.normalizer = Normalizer.for_recipe(front.recipe)
        self.dtype = front.engine_input.datatype.numpy
        self.sample_shape = front.engine_input.dims

    def allocate(self, images: int) -> np.ndarray:
        return np.empty((images, *self.sample_shape), dtype=self.dtype)

    def fill(self, client: np.ndarray, out: np.ndarray, start: int, stop: int) -> None:
        """Write images ``start:stop`` of ``client`` into the same rows of ``out``; :class:`ImageProblem` if one
        cannot be preprocessed."""
        if self.front.kind == "uint8":
            self.normalizer.nhwc_to_nchw(client[start:stop], out[start:stop])
            return
        for index in range(start, stop):
            try:
                pixels = cropped_pixels(client[index, 0], self.front.recipe, self.limits, self.decoder)
            except (ImageDecodeError, ImageTooLargeError) as exc:
                raise ImageProblem(index, exc) from None
            self.normalizer.hwc_to_chw(pixels, out[index])

    def run(self, client: np.ndarray) -> np.ndarray:
        """The whole batch in the calling thread (warm-up, tools)."""
        out = self.allocate(client.shape[0])
        self.fill(client, out, 0, client.shape[0])
        return out


def decode_threads() -> int:
    """Threads of the decode pool: the cores this process may run on, at most :data:`MAX_DECODE_THREADS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DECODE_THREADS))


class DecodePool:
    """The threads every front of one server process decodes in; its threads start on first use."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or decode_threads()
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="preprocess")

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._executor

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class PreprocessStage:
    """One front model version's preprocessing: its :class:`Preprocessor`, the shared pool, its counters."""

    def __init__(
        self, spec: ModelSpec, pool: DecodePool, stats: PreprocessStats, placement: Placement | None = None
    ) -> None:
        if spec.preprocess is None:
            raise ValueError(f"model '{spec.name}' has no preprocessing front")
        self.model = spec.name
        self.front = spec.preprocess
        self.placement = placement or Placement(self.front.device, "cpu")
        self.preprocessor = Preprocessor(self.front)
        self.device_preprocessor = None
        """A :class:`~ipsbench.server.preprocess.gpu.DevicePreprocessor` where the placement is ``gpu``."""
        if self.placement.effective == "gpu":
            from ipsbench.server.preprocess.gpu import DevicePreprocessor

            self.device_preprocessor = DevicePreprocessor(self.front, self.placement.device, self.placement.to_host)
        self.pool = pool
        self.stats = stats

    async def run(self, inputs: ModelInputs) -> ModelInputs:
        """The engine's inputs for a validated request.

        Raises INVALID_ARGUMENT ``cannot decode image for input '<in>' ...`` for bytes that are not a complete JPEG
        or PNG image, and INVALID_ARGUMENT naming the limit (``... decompression bomb``) for images over a limit.
        """
        start_ns = time.perf_counter_ns()
        front = self.front
        client = inputs.arrays[front.client_input]
        images = client.shape[0]
        loop = asyncio.get_running_loop()
        if self.device_preprocessor is not None:
            work = [loop.run_in_executor(self.pool.executor, self.device_preprocessor.run, client)]
        else:
            out = self.preprocessor.allocate(images)
            slices = min(images, self.pool.threads)
            bounds = [images * i // slices for i in range(slices + 1)]
            work = [
                loop.run_in_executor(self.pool.executor, self.preprocessor.fill, client, out, bounds[i], bounds[i + 1])
                for i in range(slices)
            ]
        results = await asyncio.gather(*work, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                self.stats.record_failure()
                if isinstance(result, ImageProblem):
                    raise self._client_error(result) from None
                raise result
        if self.device_preprocessor is not None:
            out = results[0]  # a device tensor, or a host array for an engine that takes those
        self.stats.record_success(images, time.perf_counter_ns() - start_ns)
        return ModelInputs({front.engine_input.name: out}, inputs.batch_size, None)

    def _client_error(self, problem: ImageProblem) -> ServerError:
        where = f"for input '{self.front.client_input}' for model '{self.model}' (image {problem.index})"
        if isinstance(problem.cause, ImageTooLargeError):
            return invalid_argument(f"image too large {where}: {problem.cause}")
        return invalid_argument(f"cannot decode image {where}: {problem.cause}")
