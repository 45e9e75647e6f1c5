"""The sample plan said before any load: what each objective's percentile needs, and which asked rates cannot
earn it in the duration given (with the duration that would)."""
from ipsbench.loadgen.sample_plan import plan_lines, sample_plan
from ipsbench.loadgen.scenarios.rate import RateSettings
from ipsbench.loadgen.scenarios.slo import SearchSettings
from ipsbench.loadgen.scenarios.sweep import SweepSettings
from ipsbench.loadgen.slo import parse_objective


def test_a_search_whose_lower_end_cannot_earn_p99_is_told_the_duration_that_would():
    # the shipped SLO search: p99 from 10 requests/s for 30 s holds 300 samples of the 10,000 needed
    steps = SearchSettings(search="rate", low=10, high=2000, window_s=30)
    (p99, p50) = sample_plan([parse_objective("p99=100ms"), parse_objective("p50=1s")], steps)
    # planned for 10,000 + 3 √10,000 = 10,300 expected, so that Poisson arrivals hold 10,000 nearly always
    assert p99["samples_needed"] == 10_000 and p99["rate_needed_per_s"] == 344
    assert p99["too_short_at"] == [{"rate_per_s": 10, "samples": 300, "duration_needed_s": 1030}]
    assert p50["samples_needed"] == 200 and p50["rate_needed_per_s"] == 9 and p50["too_short_at"] == []


def test_a_stability_judged_sweep_counts_its_last_three_windows():
    (entry,) = sample_plan([parse_objective("p99=1s")], SweepSettings(window_s=10, max_trials=10))
    assert entry["measured_s"] == 30 and entry["rate_needed_per_s"] == 344 and entry["too_short_at"] == []
    (single,) = sample_plan([parse_objective("p99=1s")], SweepSettings(window_s=10, max_trials=1))
    assert single["measured_s"] == 10


def test_only_the_rates_too_low_are_named():
    steps = RateSettings(rates_per_s=(100.0, 1000.0), window_s=20)
    (entry,) = sample_plan([parse_objective("p99=1s")], steps)
    assert [short["rate_per_s"] for short in entry["too_short_at"]] == [100.0]
    assert entry["too_short_at"][0]["duration_needed_s"] == 103
    assert "--duration 103s would hold them" in plan_lines([entry])[1]


def test_the_plan_is_said_before_the_load_and_the_short_step_is_not_met(server, start_load):
    run = start_load(server.grpc_url, "--rate", "5", "--arrival", "constant", "--latency-slo", "p99=60s",
                     "--warmup", "300ms", "--duration", "1s", "--drain", "5s", scenario="rate")
    assert run.finish(timeout=90) == 4, run.stdout + run.stderr()  # INCONCLUSIVE: too few samples to judge
    stderr = run.stderr()
    assert "p99 needs 10,000 samples per step" in stderr
    assert "at 5 requests/s a step holds about 5: too few to claim p99" in stderr
    assert "--duration 2060s would hold them" in stderr
    report = run.report()
    (p99, _error_rate) = report["slo"]["objectives"]
    assert not p99["met"] and not p99["enough_samples"] and report["verdict"] == "INCONCLUSIVE"
    assert report["slo"]["inconclusive_steps"] == [0] and report["slo"]["settle_duration_s"] > 1
