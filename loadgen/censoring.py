"""Open-loop latency over every scheduled arrival: those never sent or never answered count too, censored.

An open-loop step's arrivals are scheduled whether or not the target keeps up. An arrival due in the measured
window that was never sent (the in-flight cap held it back, or the sender fell behind) or never answered (still
in flight when the step stopped waiting) has no measured latency, but it has a lower bound: the time from its
intended send to the window's end. Leaving such arrivals out would make a saturated target look fast (the
arrivals it could not take are the slowest of all), so, as MLPerf's LoadGen counts them against the latency
bound, they enter the distribution here as misses: ranked after every answered request, with their window-end
bound as their value. A percentile that falls among them is reported as that bound and flagged as a lower bound;
one that falls among the answered requests is the answered latency at that rank of all the scheduled arrivals.

The record keeps each censored arrival's intended time as its offset into the window (``censored_offsets``, to 3
significant digits, in a histogram of its own whose range is a whole step's), since the window's end is final only
once the step is over (grown to hold samples, cut short by an interruption); the bound is then the window's length
less the offset rounded up, so it stays a lower bound, to within 0.05 % of the window's length.
"""

from __future__ import annotations

import numpy as np

from ipsbench.loadgen.histograms import (
    HIGHEST_LATENCY_US,
    LOWEST_LATENCY_US,
    SIGNIFICANT_DIGITS,
    LatencyHistogram,
    new_histogram,
)
from ipsbench.loadgen.report.schema import PERCENTILES


MAX_OFFSET_US = 48 * 3600 * 1_000_000
"""The range of the offsets' histogram: longer than any step's window may be."""


def new_offsets():
    """An empty histogram of censored arrivals' offsets into the window (microseconds)."""
    return LatencyHistogram(LOWEST_LATENCY_US, MAX_OFFSET_US, SIGNIFICANT_DIGITS)


def censored_bounds(offsets, window_us: int):
    """The censored arrivals' latency lower bounds (window end - intended time, microseconds, at least 1) as a
    latency histogram, from the histogram of their intended times' offsets into a window ``window_us`` long."""
    bounds = new_histogram()
    if offsets.get_total_count() == 0:  # the common case, asked every few seconds: no walk over the counters
        return bounds
    counts = offsets._counts_view()
    for index in np.flatnonzero(counts):  # the recorded buckets only (hdrhistogram's own iterator visits all)
        offset_us = offsets.get_highest_equivalent_value(offsets.get_value_from_index(int(index)))
        bound_us = min(max(window_us - offset_us, LOWEST_LATENCY_US), HIGHEST_LATENCY_US)
        bounds.record_value(bound_us, int(counts[index]))
    return bounds


def scheduled_percentile(answered, censored, percentile: float) -> tuple[int | None, bool]:
    """The ``percentile`` of every scheduled arrival's latency: the answered ones as measured, the censored ones
    ranked after them; returns (microseconds, whether it is a lower bound), or (None, False) with no arrival."""
    measured, unmeasured = answered.get_total_count(), censored.get_total_count()
    total = measured + unmeasured
    if total == 0:
        return None, False
    rank = max(1, int(percentile * total / 100 + 0.5))  # the rank HdrHistogram's own percentile query targets
    if rank <= measured:
        return answered.get_value_at_percentile(min(100.0, 100.0 * rank / measured)), False
    bound = censored.get_value_at_percentile(min(100.0, 100.0 * (rank - measured) / unmeasured))
    return max(bound, answered.get_max_value() if measured else 0), True


def scheduled_summary(answered, censored) -> dict | None:
    """min/mean/percentiles/max (microseconds) of every scheduled arrival's latency, with ``censored`` (how many
    arrivals were never sent or never answered) and ``lower_bound`` (the figures that are lower bounds)."""
    unmeasured = censored.get_total_count()
    measured = answered.get_total_count()
    if measured + unmeasured == 0:
        return None
    summary = {"count": measured + unmeasured, "censored": unmeasured,
               "min": answered.get_min_value() if measured else censored.get_min_value()}
    lower_bound = []
    if measured:
        # the answered requests' mean, raised by the bounds of those that were not: itself a lower bound then
        total_us = answered.get_mean_value() * measured + (censored.get_mean_value() * unmeasured if unmeasured else 0)
        summary["mean"] = round(total_us / (measured + unmeasured), 1)
    else:
        summary["mean"] = round(censored.get_mean_value(), 1)
    if unmeasured:
        lower_bound.append("mean")
    for name, percentile in PERCENTILES:
        summary[name], bound = scheduled_percentile(answered, censored, percentile)
        if bound:
            lower_bound.append(name)
    if unmeasured:
        summary["max"] = max(censored.get_max_value(), answered.get_max_value() if measured else 0)
        lower_bound.append("max")
    else:
        summary["max"] = answered.get_max_value()
    summary["lower_bound"] = lower_bound
    return summary
