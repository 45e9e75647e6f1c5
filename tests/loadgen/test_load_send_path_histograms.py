"""ipsbench's latency histograms answer exactly as hdrhistogram does, and cheaply enough to ask while sending."""
from __future__ import annotations

import time

import numpy as np
from hdrh.histogram import HdrHistogram
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsbench.loadgen.histograms import (
    HIGHEST_LATENCY_US,
    LOWEST_LATENCY_US,
    SIGNIFICANT_DIGITS,
    add_encoded,
    add_histogram,
    encode_histogram,
    new_histogram,
)

PERCENTILES = (0.0, 1.0, 50.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0, 150.0)


def reference_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_LATENCY_US, HIGHEST_LATENCY_US, SIGNIFICANT_DIGITS)


def assert_same_answers(fast, reference) -> None:
    assert fast.get_total_count() == reference.get_total_count()
    for percentile in PERCENTILES:
        assert fast.get_value_at_percentile(percentile) == reference.get_value_at_percentile(percentile), percentile
    assert fast.get_percentile_to_value_dict(list(PERCENTILES)) == reference.get_percentile_to_value_dict(
        list(PERCENTILES))
    assert fast.get_mean_value() == reference.get_mean_value()
    assert abs(fast.get_stddev() - reference.get_stddev()) <= 1e-9 * max(reference.get_stddev(), 1.0)
    assert (fast.get_min_value(), fast.get_max_value()) == (reference.get_min_value(), reference.get_max_value())


latencies_us = st.lists(
    st.one_of(st.integers(0, 2_000), st.integers(0, HIGHEST_LATENCY_US), st.integers(-5, HIGHEST_LATENCY_US * 2)),
    max_size=300,
)


@settings(max_examples=60, deadline=None)
@given(latencies_us)
def test_queries_match_hdrhistogram_for_any_recorded_values(values):
    fast, reference = new_histogram(), reference_histogram()
    for value in values:
        assert fast.record_value(value) == reference.record_value(value)
    assert list(fast.counts) == list(reference.counts)
    assert_same_answers(fast, reference)


def test_lognormal_latencies_and_weighted_records_match_hdrhistogram():
    rng = np.random.default_rng(3)
    fast, reference = new_histogram(), reference_histogram()
    for value in rng.lognormal(np.log(3_000), 1.2, size=5_000).astype(int):
        fast.record_value(int(value))
        reference.record_value(int(value))
    fast.record_value(40_000, count=7)
    reference.record_value(40_000, count=7)
    assert_same_answers(fast, reference)


def test_encoded_merged_and_added_histograms_still_answer_like_hdrhistogram():
    rng = np.random.default_rng(4)
    parts = [rng.integers(100, 900_000, size=500) for _ in range(3)]
    merged, reference = new_histogram(), reference_histogram()
    for part in parts:
        one = new_histogram()
        for value in part:
            one.record_value(int(value))
            reference.record_value(int(value))
        add_encoded(merged, encode_histogram(one))
    assert_same_answers(merged, reference)
    total = new_histogram()
    add_histogram(total, merged)
    assert_same_answers(total, reference)


def test_a_report_summary_is_far_cheaper_than_hdrhistograms_walk():
    """The partial report asks these while requests go out: a slow walk there delays sends."""
    fast, reference = new_histogram(), reference_histogram()
    for value in np.random.default_rng(5).integers(1_000, 50_000, size=3_000):
        fast.record_value(int(value))
        reference.record_value(int(value))

    def summary_s(histogram) -> float:
        started = time.process_time()
        histogram.get_mean_value()
        for percentile in (50.0, 90.0, 95.0, 99.0, 99.9):
            histogram.get_value_at_percentile(percentile)
        return time.process_time() - started

    summary_s(fast)  # the shared value tables are built once
    assert summary_s(fast) * 10 < summary_s(reference)
