"""Arrival processes yield intended send times: Poisson with the right rate and spread, constant exactly spaced."""
import itertools

import numpy as np
import pytest

from ipsbench.loadgen.arrivals import arrival_process, constant, poisson

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


def test_traces_read_plain_or_csv_and_split_among_senders(tmp_path):
    from ipsbench.loadgen.arrivals import read_trace, trace

    plain = tmp_path / "trace.txt"
    plain.write_text("0.5\n0.25\n\n0.25\n")
    table = tmp_path / "trace.csv"
    table.write_text("at,interarrival_s\n1,0.5\n2,0.25\n3,0.25\n")
    assert read_trace(str(plain), 10) == read_trace(str(table), 10) == (0.5, 0.25, 0.25)
    whole = list(trace((0.5, 0.25, 0.25))(START_NS))
    assert whole == [START_NS + 500_000_000, START_NS + 750_000_000, START_NS + 1_000_000_000]
    halves = [list(trace((0.5, 0.25, 0.25), part, 2)(START_NS)) for part in (0, 1)]
    assert sorted(halves[0] + halves[1]) == whole and halves[1] == [whole[1]]
    bad = tmp_path / "bad.txt"
    bad.write_text("0.1\nsoon\n")
    with pytest.raises(ValueError, match="line 2"):
        read_trace(str(bad), 10)
