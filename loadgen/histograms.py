"""HDR latency histograms as ipsbench records them: microseconds, 1 us to 60 s, 3 significant digits.

hdrhistogram's ``add`` takes an empty histogram's minimum as 0, so histograms are added through
:func:`add_histogram` / :func:`add_encoded`, which keep the minimum right when either side is empty.

hdrhistogram answers percentile and mean queries by walking its 17,408 counters in Python (tens of ms per
query), and the partial report asks several of them every few seconds while requests are being sent; a stall
that long makes sends late. :class:`LatencyHistogram` answers the same queries, with the same results, from
the counters viewed as a numpy array, and records a value with less Python arithmetic.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_LATENCY_US = 1
HIGHEST_LATENCY_US = 60_000_000
SIGNIFICANT_DIGITS = 3


class LatencyHistogram(HdrHistogram):
    """An ``HdrHistogram`` whose queries read its counters with numpy; encodes, decodes and adds as one."""

    def _counts_view(self) -> np.ndarray:
        # The counters live in a ctypes array owned by the encoder: viewed, not copied.
        return np.ctypeslib.as_array(self.counts)[: self.counts_len]

    def record_value(self, value: int, count: int = 1) -> bool:
        # hdrhistogram's own index arithmetic, inlined: this runs several times per request.
        if value < 0:
            return False
        value = int(value)
        # bucket: from the highest set bit of the value (or of the sub-bucket mask, for small values)
        bucket_index = ((value | self.sub_bucket_mask).bit_length() - self.unit_magnitude
                        - self.sub_bucket_half_count_magnitude - 1)
        index = (((bucket_index + 1) << self.sub_bucket_half_count_magnitude)
                 + (value >> (bucket_index + self.unit_magnitude)) - self.sub_bucket_half_count)
        if not 0 <= index < self.counts_len:
            return False
        self.counts[index] += count
        self.total_count += count
        if value < self.min_value:
            self.min_value = value
        if value > self.max_value:
            self.max_value = value
        return True

    def _index_at_percentile(self, percentile: float) -> int | None:
        """The first counter at which the cumulative count reaches ``percentile``'s target; None if none does."""
        target = self.get_target_count_at_percentile(percentile)
        cumulative = np.cumsum(self._counts_view())
        index = int(np.searchsorted(cumulative, target, side="left"))
        return index if index < len(cumulative) else None

    def get_value_at_percentile(self, percentile: float) -> int:
        value = self._value_at_index(percentile, self._index_at_percentile(percentile))
        return 0 if value is None else value

    def get_percentile_to_value_dict(self, percentile_list) -> dict:
        result = {}
        for percentile in sorted(set(percentile_list)):
            if percentile > 100:
                break
            value = self._value_at_index(percentile, self._index_at_percentile(percentile))
            if value is None:
                break
            result[percentile] = value
        return result

    def _value_at_index(self, percentile: float, index: int | None) -> int | None:
        """What hdrhistogram reports for ``percentile`` reached at counter ``index``: the highest value the
        counter stands for (the lowest for percentile 0)."""
        if index is None:
            return None
        lowest, highest, _ = self._ranges()
        return int(highest[index] if percentile else lowest[index])

    def _ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _equivalent_ranges(self.counts_len, self.sub_bucket_half_count_magnitude, self.unit_magnitude)

    def get_mean_value(self) -> float:
        if not self.total_count:
            return 0.0
        _, _, median = self._ranges()
        # Exact integer sum, as hdrhistogram's; int64 holds it (60 s in us times 10**11 requests would not).
        total = int(np.dot(self._counts_view().astype(np.int64), median))
        return float(total) / self.total_count

    def get_stddev(self) -> float:
        if not self.total_count:
            return 0.0
        mean = self.get_mean_value()
        _, _, median = self._ranges()
        deviation = median.astype(np.float64) - mean
        return float(np.sqrt(np.dot(self._counts_view().astype(np.float64), deviation * deviation)
                             / self.total_count))


@lru_cache(maxsize=4)
def _equivalent_ranges(counts_len: int, half_count_magnitude: int, unit_magnitude: int):
    """Per counter: the lowest and highest value it stands for, and the median hdrhistogram uses for means."""
    index = np.arange(counts_len, dtype=np.int64)
    half_count = 1 << half_count_magnitude
    bucket = (index >> half_count_magnitude) - 1
    sub_bucket = (index & (half_count - 1)) + half_count
    first = bucket < 0
    sub_bucket[first] -= half_count
    bucket[first] = 0
    lowest = sub_bucket << (bucket + unit_magnitude)
    size = np.left_shift(1, bucket + unit_magnitude)
    ranges = (lowest, lowest + size - 1, lowest + (size >> 1))
    for array in ranges:
        array.setflags(write=False)  # shared by every histogram of this layout
    return ranges


def new_histogram() -> LatencyHistogram:
    return LatencyHistogram(LOWEST_LATENCY_US, HIGHEST_LATENCY_US, SIGNIFICANT_DIGITS)


def add_histogram(into: HdrHistogram, other: HdrHistogram) -> None:
    """``into += other``."""
    if other.get_total_count() == 0:
        return
    was_empty = into.get_total_count() == 0
    into.add(other)
    if was_empty:
        into.min_value = other.min_value


def add_encoded(into: HdrHistogram, encoded: str) -> None:
    """``into += decode(encoded)`` (``encoded`` as ``HdrHistogram.encode()`` makes it, as text)."""
    add_histogram(into, HdrHistogram.decode(encoded))


def encode_histogram(histogram: HdrHistogram) -> str:
    """Compressed, base64 text: JSON- and msgpack-safe."""
    return histogram.encode().decode("ascii")


def count_above(histogram: HdrHistogram, value: int) -> int:
    """How many recorded values exceed ``value`` (at the histogram's precision: values equivalent to it count as
    not above)."""
    total = histogram.get_total_count()
    if total == 0 or histogram.get_max_value() <= value:
        return 0
    if value < histogram.get_min_value():
        return total
    index = histogram._counts_index_for(value)  # hdrhistogram's own bucket arithmetic
    counts = np.ctypeslib.as_array(histogram.counts)[: histogram.counts_len]
    return total - int(counts[: index + 1].sum())
