"""Arrival processes yield intended send times: Poisson with the right rate and spread, constant exactly spaced."""
import itertools

import numpy as np
import pytest

from loadgen.arrivals import arrival_process, constant, poisson

START_NS = 5_000_000_000


def first(schedule, count: int) -> np.ndarray:
    return np.fromiter(itertools.islice(schedule(START_NS), count), dtype=np.int64)


def test_poisson_gaps_are_exponential_with_the_requested_rate():
    times = first(poisson(200.0, seed=1), 20_000)
    gaps_s = np.diff(np.concatenate([[START_NS], times])) / 1e9
    assert np.all(gaps_s >= 0) and times[0] > START_NS
    assert gaps_s.mean() == pytest.approx(1 / 200, rel=0.03)
    assert gaps_s.std() / gaps_s.mean() == pytest.approx(1.0, rel=0.05)  # exponential: coefficient of variation 1
    assert np.mean(gaps_s > 3 / 200) == pytest.approx(np.exp(-3), abs=0.01)  # P(gap > 3 mean gaps)


def test_poisson_is_deterministic_per_seed():
    assert np.array_equal(first(poisson(50.0, seed="a/0"), 100), first(poisson(50.0, seed="a/0"), 100))
    assert not np.array_equal(first(poisson(50.0, seed="a/0"), 100), first(poisson(50.0, seed="a/1"), 100))
    schedule = poisson(50.0, seed=3)
    assert np.array_equal(first(schedule, 10), first(schedule, 10))  # each call starts the same schedule


def test_constant_arrivals_are_evenly_spaced_from_the_start():
    times = first(constant(40.0), 401)
    assert times[0] == START_NS
    assert times[-1] - START_NS == 10_000_000_000  # 400 gaps of 25 ms, without drift
    assert set(np.diff(times)) <= {25_000_000}


@pytest.mark.parametrize(("name", "rate", "message"), [
    ("uniform", 10.0, "unknown arrival process 'uniform'"),
    ("poisson", 0.0, "rate must be in"),
    ("constant", -1.0, "rate must be in"),
    ("poisson", 1e9, "rate must be in"),
])
def test_bad_arrival_processes_are_refused(name, rate, message):
    with pytest.raises(ValueError, match=message):
        arrival_process(name, rate)
