"""Open-loop latency over every scheduled arrival: those never sent or never answered count too, censored.

An open-loop step's arrivals are scheduled whether or not the target keeps up. An arrival due in the measured
window that was never sent (the in-flight cap held it back, or the sender fell behind) or never answered (still
in flight when the step stopped waiting) has no measured latency, but it has a lower bound: the time from its
intended send to the window's end. Leaving such arrivals out would make a saturated target look fast (the
arrivals it could not take are the slowest of all), so, as MLPerf's LoadGen counts them against the latency
bound, they enter the distribution here as misses: ranked after every answered request, with their window-end
bound as their value. A percentile that falls among them is reported as that bound and flagged as a lower bound;
one that falls among the answered requests is the answered latency at that rank of all the scheduled arrivals.

The record keeps each censored arrival's bound to the end the window was planned to have (``censored_bounds``,
recorded to 3 significant digits, so the bounds of the latest arrivals stay exact); an interruption that ends the
window earlier lowers every bound by as much, once the window's length is final.
"""

from __future__ import annotations

from ipsbench.loadgen.histograms import LOWEST_LATENCY_US, new_histogram
from ipsbench.loadgen.report.schema import PERCENTILES


def shortened_bounds(planned, shortened_by_us: int):
    """The censored arrivals' latency lower bounds (window end - intended time, microseconds) as a histogram, from
    ``planned``, their bounds to the planned window end, for a window that ended ``shortened_by_us`` earlier."""
    if shortened_by_us <= 0:
        return planned
    bounds = new_histogram()
    for item in planned.get_recorded_iterator():
        bound_us = planned.get_lowest_equivalent_value(item.value_iterated_to) - shortened_by_us
        bounds.record_value(max(bound_us, LOWEST_LATENCY_US), item.count_at_value_iterated_to)
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
