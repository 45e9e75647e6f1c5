"""Open-loop latency over every scheduled arrival: the censored ones ranked as misses, flagged lower bounds."""
import pytest

from ipsbench.loadgen.censoring import scheduled_percentile, scheduled_summary
from ipsbench.loadgen.histograms import new_histogram
from ipsbench.loadgen.slo import judge, parse_objective


def histogram(*values_us: int, count: int = 1):
    recorded = new_histogram()
    for value in values_us:
        recorded.record_value(value, count)
    return recorded


def test_a_percentile_among_the_answered_is_their_latency_at_that_rank_of_all_arrivals():
    answered = histogram(*range(1_000, 99_001, 1_000))  # 99 answered: 1..99 ms
    censored = histogram(5_000)  # one never answered, 5 ms before the window closed
    # of 100 arrivals, p50 is the 50th: answered, 50 ms; the censored one ranks last, however small its bound
    assert scheduled_percentile(answered, censored, 50.0) == (pytest.approx(50_000, rel=1e-3), False)
    assert scheduled_percentile(answered, censored, 99.0) == (pytest.approx(99_000, rel=1e-3), False)
    value, lower_bound = scheduled_percentile(answered, censored, 99.5)
    assert lower_bound and value == pytest.approx(99_000, rel=1e-3)  # at least every answered latency


def test_a_percentile_among_the_censored_is_their_window_end_bound():
    answered = histogram(1_000, count=90)
    censored = histogram(*range(100_000, 1_000_001, 100_000))  # 10 unsent: at least 0.1..1 s
    value, lower_bound = scheduled_percentile(answered, censored, 95.0)
    assert lower_bound and value == pytest.approx(500_000, rel=1e-3)  # the 5th of the 10 bounds
    summary = scheduled_summary(answered, censored)
    assert summary["count"] == 100 and summary["censored"] == 10 and summary["p50"] == 1_000
    assert summary["lower_bound"] == ["mean", "p95", "p99", "p99.9", "max"]
    assert summary["max"] == pytest.approx(1_000_000, rel=1e-3)


def test_nothing_censored_is_the_answered_distribution_itself():
    answered = histogram(*range(1, 1001))
    summary = scheduled_summary(answered, new_histogram())
    assert summary["lower_bound"] == [] and summary["censored"] == 0
    assert summary["p99"] == answered.get_value_at_percentile(99.0) and summary["max"] == 1_000


def test_judging_counts_censored_arrivals_as_misses():
    """p50 = 10 ms over 1,000 arrivals: met with 600 fast answers and 400 unsent; not with 400 fast and 600 unsent,
    though every answered request was fast and each unsent one was due only 1 ms before the window closed."""
    objectives = [parse_objective("p50=10ms")]
    met = judge(objectives, histogram(2_000, count=600), 0.0, 600, 0.0, censored=histogram(1_000, count=400))
    assert met[0]["met"] and met[0]["samples"] == 1_000 and not met[0]["lower_bound"]
    missed = judge(objectives, histogram(2_000, count=400), 0.0, 400, 0.0, censored=histogram(1_000, count=600))
    assert not missed[0]["met"] and missed[0]["lower_bound"] and missed[0]["enough_samples"]
    assert missed[0]["why"] == ("p50 at least 2 ms: it falls among the 600 arrivals never sent or never answered "
                                "in the window")
