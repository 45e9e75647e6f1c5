"""Bootstrap confidence intervals of the change in one step's figure from a base run to a new run, from what the
reports store: a latency percentile or the mean from each step's ``latency_histogram``, images/sec (or requests/sec)
from its stability windows, the error rate from its counts.

Each run is resampled on its own (the two runs are two independent samples), the figure recomputed on each
resample, and the interval is the percentile interval of the resampled changes. A histogram is resampled by drawing
its counters' counts from a multinomial over the values it recorded (numpy), never by expanding it to one value per
request, so the work is ``resamples × recorded counters`` however many requests a step holds; windows are resampled
with replacement; the error count is drawn from a binomial over the requests issued. Random draws come from a
generator with a fixed seed, so the same two reports always give the same interval.

A histogram comes from a file someone handed over: its text, its decompressed size and its layout are bounded and
checked before hdrhistogram allocates anything for it; anything else is refused with :class:`FigureUnavailable`.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from hdrh.codec import PayloadHeader
from hdrh.histogram import HdrHistogram

from ipsbench.loadgen.histograms import (
    HIGHEST_LATENCY_US,
    LOWEST_LATENCY_US,
    SIGNIFICANT_DIGITS,
    add_encoded,
    new_histogram,
)

SEED = 20_260_101
"""The draws' seed: a verdict is reproducible from the two reports alone."""
DEFAULT_RESAMPLES = 1000
RESAMPLES_RANGE = (100, 10_000)
DEFAULT_CONFIDENCE = 0.95
CONFIDENCE_RANGE = (0.5, 0.999)
MAX_HISTOGRAM_CHARS = 1 << 20
"""The longest ``latency_histogram`` text read (ipsbench's are a few KB)."""
MAX_DECOMPRESSED_BYTES = 1 << 20
"""A histogram of ipsbench's layout decompresses to well under this (17,408 counters, at most 9 bytes each)."""
ENCODING_HEADER_BYTES = 8
"""hdrhistogram's wire format: a cookie and the compressed length, then the zlib payload."""
MAX_COUNT = 1 << 62
"""The most requests one histogram or one step may hold here (numpy's draws take 64-bit counts)."""
CELLS_PER_CHUNK = 1 << 21
"""Resamples are drawn in chunks of at most this many counters, to bound memory."""


class FigureUnavailable(Exception):
    """A figure the reports do not hold well enough to resample; the message says what is missing."""


@dataclass(frozen=True)
class Interval:
    """A change from base to new: the point change and its confidence interval (``low`` ≤ ``high``)."""

    base: float
    new: float
    change: float
    low: float
    high: float


@dataclass(frozen=True)
class Resampler:
    """How many resamples, at what confidence, from which seed."""

    resamples: int = DEFAULT_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = SEED

    def __post_init__(self) -> None:
        low, high = RESAMPLES_RANGE
        if not low <= self.resamples <= high:
            raise ValueError(f"resamples must be in [{low}, {high}], got {self.resamples}")
        low, high = CONFIDENCE_RANGE
        if not low <= self.confidence <= high:
            raise ValueError(f"confidence must be in [{low:g}, {high:g}], got {self.confidence:g}")

    def generator(self, *stream: int) -> np.random.Generator:
        """A generator of its own for each figure (``stream``: e.g. the step's and the clause's positions), so
        adding a clause changes no other clause's draws."""
        return np.random.default_rng([self.seed, *stream])

    def interval(self, base: float, new: float, base_draws: np.ndarray, new_draws: np.ndarray,
                 change: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Interval:
        """The interval of ``change(base, new)`` over the paired resamples (pairs where it is not finite dropped)."""
        changes = change(base_draws, new_draws)
        changes = changes[np.isfinite(changes)]
        if changes.size < self.resamples // 2:
            raise FigureUnavailable("the base run's figure is zero in most resamples")
        tail = (1 - self.confidence) / 2
        low, high = np.quantile(changes, [tail, 1 - tail])
        point = float(change(np.array([base]), np.array([new]))[0])
        return Interval(base, new, point, float(low), float(high))


def absolute(base: np.ndarray, new: np.ndarray) -> np.ndarray:
    return new - base


def relative(base: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The change as a fraction of the base (+0.1: 10 % more); not finite where the base is zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base != 0, new / np.where(base != 0, base, 1) - 1, np.nan)


# --- latency, from histograms -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedValues:
    """A histogram's counters that hold a count: the value each stands for and its count, ascending."""

    highest: np.ndarray
    """What a percentile reached at the counter reports (hdrhistogram's highest equivalent value)."""
    median: np.ndarray
    """What the counter adds to a mean (hdrhistogram's median equivalent value)."""
    counts: np.ndarray

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def decode_latency_histogram(encoded: object) -> HdrHistogram:
    """A step's ``latency_histogram`` text as a histogram of ipsbench's layout, checked before it is decoded."""
    if not isinstance(encoded, str):
        raise FigureUnavailable("latency_histogram is not text")
    if len(encoded) > MAX_HISTOGRAM_CHARS:
        raise FigureUnavailable(f"latency_histogram is longer than {MAX_HISTOGRAM_CHARS} characters")
    try:
        wire = base64.b64decode(encoded, validate=True)
        inflate = zlib.decompressobj()
        payload = inflate.decompress(wire[ENCODING_HEADER_BYTES:], MAX_DECOMPRESSED_BYTES)
    except (binascii.Error, zlib.error, ValueError) as error:
        raise FigureUnavailable(f"latency_histogram is not an encoded histogram ({error})") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise FigureUnavailable(f"latency_histogram decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes")
    if len(payload) < ctypes.sizeof(PayloadHeader):
        raise FigureUnavailable("latency_histogram is too short")
    header = PayloadHeader.from_buffer_copy(payload)
    layout = (header.lowest_trackable_value, header.highest_trackable_value, header.significant_figures)
    if layout != (LOWEST_LATENCY_US, HIGHEST_LATENCY_US, SIGNIFICANT_DIGITS):
        raise FigureUnavailable(f"latency_histogram has layout {layout}, not ipsbench's "
                                f"({LOWEST_LATENCY_US}, {HIGHEST_LATENCY_US}, {SIGNIFICANT_DIGITS})")
    histogram = new_histogram()
    try:
        add_encoded(histogram, encoded)
    except Exception as error:  # hdrhistogram raises its own exception types, and ctypes' and zlib's
        raise FigureUnavailable(f"latency_histogram cannot be decoded ({type(error).__name__}: {error})") from None
    return histogram


def recorded_values(histogram: HdrHistogram) -> RecordedValues:
    counts = np.ctypeslib.as_array(histogram.counts)[: histogram.counts_len]
    if sum(int(count) for count in counts[counts != 0]) > MAX_COUNT:  # Python ints: a 64-bit sum could wrap
        raise FigureUnavailable(f"latency_histogram holds more than {MAX_COUNT} requests")
    counts = counts.astype(np.int64)
    indexes = np.flatnonzero(counts)
    lowest = np.array([histogram.get_lowest_equivalent_value(histogram.get_value_from_index(int(i)))
                       for i in indexes], dtype=np.int64)
    highest = np.array([histogram.get_highest_equivalent_value(int(value)) for value in lowest], dtype=np.int64)
    median = lowest + (highest - lowest + 1) // 2
    return RecordedValues(highest, median, counts[indexes])


def percentile_of(values: RecordedValues, counts: np.ndarray, percentile: float) -> np.ndarray:
    """Per row of ``counts`` (resampled counts of ``values``' counters): the value at ``percentile``, as
    hdrhistogram answers it (the first counter whose cumulative count reaches the target count)."""
    total = counts.sum(axis=1)
    target = np.maximum((percentile * total / 100 + 0.5).astype(np.int64), 1)
    cumulative = np.cumsum(counts, axis=1)
    index = np.argmax(cumulative >= target[:, None], axis=1)
    return values.highest[index].astype(np.float64)


def mean_of(values: RecordedValues, counts: np.ndarray) -> np.ndarray:
    return counts @ values.median.astype(np.float64) / counts.sum(axis=1)


def latency_draws(values: RecordedValues, statistic: Callable[[np.ndarray], np.ndarray], resamples: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``statistic`` of ``resamples`` multinomial resamples of the histogram, drawn in bounded chunks."""
    total = values.total
    if total <= 0:
        raise FigureUnavailable("the step has no latency recorded")
    probabilities = values.counts / total
    rows = max(1, CELLS_PER_CHUNK // len(values.counts))
    draws = []
    for start in range(0, resamples, rows):
        counts = rng.multinomial(total, probabilities, size=min(rows, resamples - start))
        draws.append(statistic(counts))
    return np.concatenate(draws)


def latency_statistic(values: RecordedValues, name: str) -> Callable[[np.ndarray], np.ndarray]:
    """``mean`` or a percentile (``p99`` → 99.0, ``p99.9`` → 99.9) of resampled counts."""
    if name == "mean":
        return lambda counts: mean_of(values, counts)
    percentile = float(name[1:])
    return lambda counts: percentile_of(values, counts, percentile)


def latency_interval(base: RecordedValues, new: RecordedValues, name: str, resampler: Resampler,
                     change: Callable[[np.ndarray, np.ndarray], np.ndarray], *stream: int) -> Interval:
    """The change of ``name`` (``mean``, ``p50`` … ``p99.9``, microseconds) from ``base``'s histogram to ``new``'s."""
    rng = resampler.generator(*stream)
    base_point = float(latency_statistic(base, name)(base.counts[None, :])[0])
    new_point = float(latency_statistic(new, name)(new.counts[None, :])[0])
    base_draws = latency_draws(base, latency_statistic(base, name), resampler.resamples, rng)
    new_draws = latency_draws(new, latency_statistic(new, name), resampler.resamples, rng)
    return resampler.interval(base_point, new_point, base_draws, new_draws, change)


# --- throughput, from windows -------------------------------------------------------------------------------------


def window_draws(windows: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The mean of ``resamples`` resamples (with replacement) of the windows' figures."""
    picks = rng.integers(0, len(windows), size=(resamples, len(windows)))
    return windows[picks].mean(axis=1)


def window_interval(base: Sequence[float], new: Sequence[float], resampler: Resampler,
                    change: Callable[[np.ndarray, np.ndarray], np.ndarray], *stream: int) -> Interval:
    """The change of the windows' mean figure from ``base``'s windows to ``new``'s (at least 2 each)."""
    base_windows, new_windows = np.asarray(base, np.float64), np.asarray(new, np.float64)
    rng = resampler.generator(*stream)
    return resampler.interval(float(base_windows.mean()), float(new_windows.mean()),
                              window_draws(base_windows, resampler.resamples, rng),
                              window_draws(new_windows, resampler.resamples, rng), change)


# --- error rate, from counts --------------------------------------------------------------------------------------


def rate_interval(base: tuple[int, int], new: tuple[int, int], resampler: Resampler, *stream: int) -> Interval:
    """The change of an error rate (``(errors, issued)`` of each run) in absolute terms, as binomial draws."""
    if max(base[1], new[1]) > MAX_COUNT:
        raise FigureUnavailable(f"a step issued more than {MAX_COUNT} requests")
    rng = resampler.generator(*stream)

    def draws(errors: int, issued: int) -> np.ndarray:
        return rng.binomial(issued, errors / issued, size=resampler.resamples) / issued

    return resampler.interval(base[0] / base[1], new[0] / new[1], draws(*base), draws(*new), absolute)
