"""The preprocessing stage of a front model: client-facing input → engine tensor, off the event loop.

Runs between validation and the batcher. The images of a request are split into as many slices as the decode
pool has threads (at most one per image), each slice decoded and written straight into its rows of the one
output tensor; the decoders and numpy release the GIL, so slices run in parallel on several cores. A model without
preprocessing passes through untouched.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ipsbench.server.errors import ServerError, invalid_argument
from ipsbench.server.model import ModelSpec, PreprocessSpec
from ipsbench.server.preprocess.decode import DecodeLimits, ImageDecodeError, ImageTooLargeError, decode_rgb
from ipsbench.server.preprocess.stats import BOOK, PreprocessBook
from ipsbench.server.preprocess.transform import Normalizer, center_crop_resized
from ipsbench.server.validate import ValidatedInputs

MAX_DECODE_THREADS = 16


class ImageProblem(Exception):
    """An image of a request that cannot be preprocessed: which one, and why."""

    def __init__(self, index: int, cause: ImageDecodeError | ImageTooLargeError) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


class Preprocessor:
    """Turns one front's client-facing array into its engine tensor (synchronous; thread-safe)."""

    def __init__(self, front: PreprocessSpec, decoder: str | None = None) -> None:
        self.front = front
        self.decoder = decoder
        self.limits = DecodeLimits(front.max_pixels, front.max_image_bytes)
        self.normalizer = Normalizer.from_mean_std(front.mean, front.std)
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
        front = self.front
        for index in range(start, stop):
            data = client[index, 0]
            try:
                decoded = decode_rgb(data, self.limits, front.resize, self.decoder)
            except (ImageDecodeError, ImageTooLargeError) as exc:
                raise ImageProblem(index, exc) from None
            cropped = center_crop_resized(decoded.image, front.resize, front.crop, decoded.original_size)
            self.normalizer.hwc_to_chw(np.asarray(cropped), out[index])

    def run(self, client: np.ndarray) -> np.ndarray:
        """The whole batch in the calling thread (warm-up, tools)."""
        out = self.allocate(client.shape[0])
        self.fill(client, out, 0, client.shape[0])
        return out


_preprocessors: dict[int, tuple[PreprocessSpec, Preprocessor]] = {}
_pool: ThreadPoolExecutor | None = None
_pool_threads = 0
_pool_lock = threading.Lock()


def preprocessor_for(front: PreprocessSpec) -> Preprocessor:
    """One :class:`Preprocessor` per front spec (the spec is kept alive by the entry, so its id stays unique)."""
    entry = _preprocessors.get(id(front))
    if entry is None:
        entry = _preprocessors.setdefault(id(front), (front, Preprocessor(front)))
    return entry[1]


def decode_threads() -> int:
    """Threads of the decode pool: the cores this process may run on, at most :data:`MAX_DECODE_THREADS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DECODE_THREADS))


def decode_pool() -> tuple[ThreadPoolExecutor, int]:
    """The process's decode pool, started on first use, and its thread count."""
    global _pool, _pool_threads
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool_threads = decode_threads()
                _pool = ThreadPoolExecutor(max_workers=_pool_threads, thread_name_prefix="preprocess")
    return _pool, _pool_threads


async def preprocess_inputs(
    spec: ModelSpec, version: int, validated: ValidatedInputs, book: PreprocessBook = BOOK
) -> ValidatedInputs:
    """The engine's inputs for a front model's validated request (``validated`` itself for any other model).

    Raises INVALID_ARGUMENT ``cannot decode image for input '<in>' ...`` for bytes that are not a complete JPEG or
    PNG image, and INVALID_ARGUMENT naming the limit (``... decompression bomb``) for images over a size limit.
    """
    front = spec.preprocess
    if front is None:
        return validated
    start_ns = time.perf_counter_ns()
    stats = book.for_model(spec.name, version)
    preprocessor = preprocessor_for(front)
    client = validated.arrays[front.client_input]
    images = client.shape[0]
    out = preprocessor.allocate(images)
    pool, threads = decode_pool()
    slices = min(images, threads)
    bounds = [images * i // slices for i in range(slices + 1)]
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(
        *(
            loop.run_in_executor(pool, preprocessor.fill, client, out, bounds[i], bounds[i + 1])
            for i in range(slices)
        ),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            stats.record_failure()
            if isinstance(result, ImageProblem):
                raise _client_error(result, front, spec.name) from None
            raise result
    stats.record_success(images, time.perf_counter_ns() - start_ns)
    return ValidatedInputs({front.engine_input.name: out}, validated.batch_size, None)


def _client_error(problem: ImageProblem, front: PreprocessSpec, model: str) -> ServerError:
    where = f"for input '{front.client_input}' for model '{model}' (image {problem.index})"
    if isinstance(problem.cause, ImageTooLargeError):
        return invalid_argument(f"image too large {where}: {problem.cause}")
    return invalid_argument(f"cannot decode image {where}: {problem.cause}")
