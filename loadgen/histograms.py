"""HDR latency histograms as ipsbench records them: microseconds, 1 us to 60 s, 3 significant digits.

hdrhistogram's ``add`` takes an empty histogram's minimum as 0, so histograms are added through
:func:`add_histogram` / :func:`add_encoded`, which keep the minimum right when either side is empty.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

LOWEST_LATENCY_US = 1
HIGHEST_LATENCY_US = 60_000_000
SIGNIFICANT_DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_LATENCY_US, HIGHEST_LATENCY_US, SIGNIFICANT_DIGITS)


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
