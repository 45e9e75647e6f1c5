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


def test_a_rate_too_low_for_its_duration_measures_longer_and_one_too_low_even_then_is_named():
    steps = RateSettings(rates_per_s=(1.0, 100.0, 1000.0), window_s=20)
    (entry,) = sample_plan([parse_objective("p99=1s")], steps)
    assert entry["longest_s"] == 600  # --max-duration's default
    assert [short["rate_per_s"] for short in entry["too_short_at"]] == [1.0]  # 10,300 s: past 600 s
    lines = plan_lines([entry])
    assert "up to 600 s (--max-duration)" in lines[0]
    assert "  at 100 requests/s a step measures about 103 s to hold them" in lines
    assert not any("at 1000 requests/s" in line for line in lines)  # 20 s holds them
    # never grown: the rate whose --duration is too short is named with the duration that would do
    fixed = RateSettings(rates_per_s=(100.0, 1000.0), window_s=20, max_window_s=20)
    (entry,) = sample_plan([parse_objective("p99=1s")], fixed)
    assert [short["rate_per_s"] for short in entry["too_short_at"]] == [100.0]
    assert entry["too_short_at"][0]["duration_needed_s"] == 103
    assert "--duration 103s would hold them" in plan_lines([entry])[1]


def test_early_stopping_plans_for_the_fewest_samples_that_can_settle_the_percentile():
    (entry,) = sample_plan([parse_objective("p99=1s")], RateSettings(rates_per_s=(20.0,), window_s=30,
                                                                      max_window_s=30), "early-stopping")
    # 0.99 ** 459 < 1 %: 459 answers all within the target settle p99 as met at 99 % confidence
    assert entry["samples_needed"] == 459 and entry["too_short_at"] == []
    assert plan_lines([entry])[0].startswith("p99 needs at least 459 samples per step (early stopping")


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


def test_a_step_short_of_samples_measures_until_it_holds_them_and_is_judged_on_the_merits(server, start_load):
    """p50 needs 200 samples; 40 requests/s for a 2 s --duration holds 80. The step's window grows, by the rate
    it measured, until it holds them: the objective is judged (met: resnet18 at 64x64 answers far within 60 s),
    where a window held to --duration (--max-duration 2s) leaves it INCONCLUSIVE."""
    load = ("--rate", "40", "--arrival", "constant", "--latency-slo", "p50=60s", "--warmup", "300ms",
            "--duration", "2s", "--drain", "5s")
    run = start_load(server.grpc_url, *load, scenario="rate")
    assert run.finish(timeout=120) == 0, run.stdout + run.stderr()
    report = run.report()
    assert report["verdict"] == "PASS" and report["slo"]["verdict"] == "PASS"
    (step,) = report["steps"]
    assert step["window_grown"] and step["window_s"] > 2 * step["planned_window_s"]
    (p50, _error_rate) = step["slo"]["objectives"]
    assert p50["met"] and p50["enough_samples"] and p50["samples"] >= 200
    assert "measured window grown to" in run.stderr()

    held = start_load(server.grpc_url, *load, "--max-duration", "2s", scenario="rate")
    assert held.finish(timeout=120) == 4, held.stdout + held.stderr()
    (step,) = held.report()["steps"]
    assert not step["window_grown"] and step["slo"]["inconclusive"]


def test_early_stopping_settles_a_far_target_from_fewer_samples_and_a_missed_one_too(server, start_load):
    """Early stopping: every answer far within 60 s settles p99 as met once about 459 are in (10,000 with
    min-samples), and an objective no answer meets (p90 of 1 µs) is settled as missed from a few dozen: FAIL,
    not INCONCLUSIVE."""
    load = ("--rate", "100", "--arrival", "constant", "--warmup", "300ms", "--duration", "2s", "--drain", "5s",
            "--sample-rule", "early-stopping")
    run = start_load(server.grpc_url, *load, "--latency-slo", "p99=60s", scenario="rate")
    assert run.finish(timeout=120) == 0, run.stdout + run.stderr()
    (step,) = run.report()["steps"]
    (p99, _error_rate) = step["slo"]["objectives"]
    assert p99["met"] and p99["rule"] == "early-stopping" and p99["over_target"] == 0
    assert 459 <= p99["samples"] < 10_000 and step["window_grown"]

    missed = start_load(server.grpc_url, *load, "--latency-slo", "p90=1us", scenario="rate")
    assert missed.finish(timeout=120) == 1, missed.stdout + missed.stderr()
    report = missed.report()
    assert report["verdict"] == "FAIL"
    (step,) = report["steps"]
    (p90, _error_rate) = step["slo"]["objectives"]
    assert not p90["met"] and p90["enough_samples"] and not step["slo"]["inconclusive"]
    assert not step["window_grown"]  # settled within --duration


def test_a_window_does_not_grow_for_samples_once_its_errors_already_decide_it():
    """Errors past the bound even if every request the longest window could add succeeded: a dead or refusing
    server's step is not measured for minutes more to hold latency samples."""
    import grpc

    from ipsbench.loadgen.recorder import StepRecord
    from ipsbench.loadgen.watchers import SampleKeeper

    ms = 1_000_000
    step = StepRecord(index=0, concurrency=1, warmup_s=0.0, window_s=2.0, start_ns=0)
    for number in range(100):
        step.record_issued()
        if number % 2:
            step.record_error(grpc.StatusCode.INTERNAL, "engine failed", number * 10 * ms, number * 10 * ms + ms)
        else:
            step.record_ok(number * 10 * ms, number * 10 * ms + ms, images=1)
    # 50 errors of 100 in 1 s; a 600 s window would issue about 60,000: 1 % allows 600, 0.01 % allows 6
    lenient = SampleKeeper(None, [], "min-samples", 600.0, max_error_rate=0.01)
    strict = SampleKeeper(None, [], "min-samples", 600.0, max_error_rate=0.0001)
    assert not lenient._errors_settle(step, 1_000 * ms)
    assert strict._errors_settle(step, 1_000 * ms)
