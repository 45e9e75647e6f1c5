"""The SLO search, objectives, stability rule and a stability-judged step's figures, checked without a server."""
import pytest

from ipsbench.loadgen.outcomes import Outcome
from ipsbench.loadgen.recorder import StepRecord
from ipsbench.loadgen.report.schema import VERDICT_EXIT_CODES
from ipsbench.loadgen.step_encoding import decode_step, encode_step, merge_step
from load_helpers import report_from
from ipsbench.loadgen.slo import Search, judge, min_samples, parse_objective
from ipsbench.loadgen.stability import is_stable, stability_entry, stability_metric_list

MS = 1_000_000


def run_search(search: Search, highest_passing: float) -> Search:
    """Drive ``search`` against an oracle that meets the SLO up to ``highest_passing``."""
    while (value := search.next_value()) is not None:
        search.record(value, value <= highest_passing, len(search.steps), [])
    return search


@pytest.mark.parametrize(("kind", "low", "high", "answer", "best"), [
    ("concurrency", 1, 16, 5, 5),
    ("concurrency", 1, 64, 63, 63),
    ("rate", 10.0, 100.0, 37.0, pytest.approx(37.0, rel=0.05)),
])
def test_search_brackets_then_bisects_to_the_highest_passing_value(kind, low, high, answer, best):
    search = run_search(Search(kind, low, high, max_steps=12), answer)
    assert search.best == best and search.best <= answer
    values = [step["value"] for step in search.steps]
    assert values[:2] == [low, high] and all(low <= v <= high for v in values)
    assert len(values) <= 12 and search.stopped_because == "bracket narrower than the resolution"
    assert search.describe()["bracket"] == [low, high]


def test_search_stops_at_the_bounds_or_the_step_budget():
    assert run_search(Search("rate", 10, 100, max_steps=8), 5).best is None  # the lower end fails
    top = run_search(Search("rate", 10, 100, max_steps=8), 1000)
    assert top.best == 100 and len(top.steps) == 2 and "may lie above" in top.stopped_because
    budget = run_search(Search("rate", 1, 1000, max_steps=4, resolution=0.001), 500)
    assert len(budget.steps) == 4 and budget.stopped_because == "4 steps run" and budget.best < 500


@pytest.mark.parametrize(("text", "name", "target_us"), [
    ("p99=100ms", "p99", 100_000), ("p99.9 = 1s", "p99.9", 1_000_000), ("p50=250us", "p50", 250),
])
def test_objectives_parse(text, name, target_us):
    objective = parse_objective(text)
    assert (objective.name, objective.target_us) == (name, target_us)


@pytest.mark.parametrize("text", ["99=100ms", "p99", "p100=1s", "p0=1s", "p99=fast"])
def test_bad_objectives_are_refused(text):
    with pytest.raises(ValueError):
        parse_objective(text)


def window(images_per_s: float, p50_us: int | None, requests: int = 1_000, p99_us: int | None = None) -> dict:
    return {"images_per_s": images_per_s, "requests": requests if p50_us is not None else 0, "p50": p50_us,
            "p90": p50_us, "p95": p50_us, "p99": p99_us if p99_us is not None else p50_us, "mean": p50_us}


def test_stability_needs_three_windows_agreeing_on_throughput_and_p50_by_default():
    assert is_stable([window(100, 10_000), window(105, 10_500), window(95, 9_800)], 0.10)
    assert not is_stable([window(100, 10_000), window(105, 10_500)], 0.10)  # two windows are not enough
    assert not is_stable([window(100, 10_000), window(130, 10_500), window(95, 9_800)], 0.10)  # throughput off
    assert not is_stable([window(100, 10_000), window(100, 14_000), window(100, 9_800)], 0.10)  # p50 off
    # only the last 3 count
    assert is_stable([window(10, 1), window(100, 10_000), window(105, 10_500), window(95, 9_800)], 0.10)
    assert not is_stable([window(100, None), window(100, 10_000), window(100, 10_000)], 0.10)  # no success
    # p99 is not a default metric: windows that disagree on it alone are stable
    assert is_stable([window(100, 10_000, p99_us=p99) for p99 in (20_000, 40_000, 30_000)], 0.10)


def test_a_percentile_is_judged_only_from_windows_holding_the_samples_it_needs():
    """p99 of 90-sample windows is their maximum: not judged, and said so; images/sec still is."""
    small = [window(100, 10_000, requests=90, p99_us=p99) for p99 in (20_000, 40_000, 30_000)]
    assert is_stable(small, 0.10, ("images_per_s", "p99"))  # judged on images/sec only
    assert not is_stable(small, 0.10, ("p99",))  # nothing it can be judged on
    entry = stability_entry(small, False, 3, 0.10, ("images_per_s", "p99"))
    assert entry["judged_metrics"] == ["images_per_s"]
    assert entry["unjudged_metrics"] == {"p99": "a window held 90 samples, 10000 needed to judge p99"}
    large = [window(100, 10_000, requests=20_000, p99_us=p99) for p99 in (20_000, 40_000, 30_000)]
    assert not is_stable(large, 0.10, ("images_per_s", "p99"))  # judged, and p99 disagrees
    with pytest.raises(ValueError, match="comma-separated choice of images_per_s, p50"):
        stability_metric_list("p50,p42")
    assert stability_metric_list("images_per_s, p95") == ("images_per_s", "p95")


def stability_step() -> StepRecord:
    """Five 1 s trials after 1 s of warm-up: 10 requests per trial, trial n taking (n + 1) ms each."""
    step = StepRecord(index=0, concurrency=2, warmup_s=1.0, window_s=1.0, start_ns=0, trials_max=10)
    for trial in range(5):
        for number in range(10):
            done_ns = (1_000 + 1_000 * trial + 50 * number) * MS
            step.record_issued()
            step.record_ok(done_ns - (trial + 1) * MS, done_ns, images=2)
    step.end_after_trials(5, stable=True)
    return step


def test_a_stability_judged_step_reports_its_last_three_windows():
    step = stability_step()
    assert [step.trial_figures(n)["images_per_s"] for n in range(5)] == [20.0] * 5
    settled = step.settled()
    assert settled.measured_window_s == 3.0 and settled.window_counts[Outcome.OK] == 30
    assert settled.histograms[Outcome.OK].get_min_value() == 3000  # trials 3 to 5 only
    assert settled.issued == step.issued == 50

    report = report_from(
        steps=[step], settings={}, target={}, model={}, payload={}, scenario="sweep", started_at="", duration_s=8.0,
        interrupted_by=None, max_error_rate=0.0, tolerance=0.1,
    )
    (entry,) = report["steps"]
    assert entry["window_s"] == 3.0 and entry["images_ok"] == 60 and entry["images_per_s"] == 20.0
    assert entry["stability"]["stable"] and entry["stability"]["trials"] == 5
    p99s = [w["p99_us"] for w in entry["stability"]["windows"]]
    assert p99s == pytest.approx([1000, 2000, 3000, 4000, 5000], rel=1e-3)  # HDR: 3 significant digits
    assert report["verdict"] == "PASS" and report["stable"]


def test_an_unstable_step_makes_the_verdict_unstable():
    step = stability_step()
    step.stable = False
    report = report_from(
        steps=[step], settings={}, target={}, model={}, payload={}, scenario="sweep", started_at="", duration_s=8.0,
        interrupted_by=None, max_error_rate=0.0,
    )
    assert report["valid"] and report["verdict"] == "UNSTABLE" and report["unstable_steps"] == [0]


def test_trials_merge_across_processes():
    one, other = stability_step(), stability_step()
    merged = decode_step(encode_step(one), start_ns=0)
    merge_step(merged, encode_step(other))
    figures = merged.trial_figures(4)
    assert figures["images_per_s"] == 40.0 and figures["p99"] == pytest.approx(5000, rel=1e-3)
    assert merged.settled().window_counts[Outcome.OK] == 60


def test_a_percentile_without_enough_samples_is_inconclusive_with_the_duration_that_would_settle_it():
    step = stability_step()
    report = report_from(
        steps=[step], settings={}, target={}, model={}, payload={}, scenario="sweep", started_at="", duration_s=8.0,
        interrupted_by=None, max_error_rate=0.0, objectives=[parse_objective("p50=1s")],
    )
    p50, error_rate = report["slo"]["objectives"]
    assert report["slo"]["verdict"] == "INCONCLUSIVE" and report["verdict"] == "INCONCLUSIVE"
    assert VERDICT_EXIT_CODES["INCONCLUSIVE"] == 4
    assert p50["measured_us"] <= 5000 and not p50["enough_samples"] and not p50["met"]
    assert p50["samples"] == 30 and p50["samples_needed"] == min_samples(50) == 200 and "30 samples" in p50["why"]
    assert error_rate["name"] == "error_rate" and error_rate["met"]
    # 30 samples in three 1 s windows; 200 + 3 √200 = 243 expected would need 9 s windows
    assert report["steps"][0]["slo"]["inconclusive"] and report["steps"][0]["slo"]["settle_duration_s"] == 9
    assert report["slo"]["inconclusive_steps"] == [0] and report["slo"]["settle_duration_s"] == 9


def test_a_missed_objective_fails_even_beside_one_short_of_samples():
    objectives = ["p50=1s", "p10=1us"]  # p10 holds its 112 samples and misses its target; p50 lacks its 200
    step = StepRecord(index=0, concurrency=2, warmup_s=0.0, window_s=1.0, start_ns=0)
    for number in range(150):
        step.record_issued()
        step.record_ok(number * MS, (number + 2) * MS, images=1)
    report = report_from(
        steps=[step], settings={}, target={}, model={}, payload={}, scenario="sweep", started_at="", duration_s=2.0,
        interrupted_by=None, max_error_rate=0.0, objectives=[parse_objective(o) for o in objectives],
    )
    assert report["slo"]["verdict"] == "FAIL" and report["verdict"] == "FAIL"
    assert report["slo"]["inconclusive_steps"] == [] and not report["steps"][0]["slo"]["inconclusive"]


def test_client_bound_when_the_load_generator_is_busy():
    step = stability_step()
    step.cpu_percent = [40.0, 97.5]
    report = report_from(
        steps=[step], settings={}, target={}, model={}, payload={}, scenario="sweep", started_at="", duration_s=8.0,
        interrupted_by=None, max_error_rate=0.0,
    )
    client = report["steps"][0]["client"]
    assert client["client_bound"] and client["cpu_percent"] == 97.5
    assert "process 1 used 97.5% of a core" in client["reasons"][0]
    assert any("client-bound" in warning for warning in report["warnings"])


def test_L21_an_slo_search_step_whose_arrivals_met_the_in_flight_cap_does_not_meet_the_slo():
    """Fast answers for the arrivals that went out say nothing of those held back: the step fails the SLO."""
    from ipsbench.loadgen.scenarios.slo import step_meets

    ms = 1_000_000
    step = StepRecord(index=0, concurrency=1, warmup_s=0.0, window_s=6.0, start_ns=0, rate_per_s=100.0)
    for number in range(600):
        intended = number * 10 * ms
        step.record_scheduled(intended)
        if number % 2:
            step.record_not_sent(intended, capped=True)
            continue
        step.record_issued()
        step.record_send(intended, intended)
        step.record_ok(intended, intended + ms, images=1, intended_ns=intended)
    objectives = [parse_objective("p50=1s")]
    met, why = step_meets(step, objectives, max_error_rate=0.0)
    assert not met and why == ["300 of 600 scheduled arrivals were not sent: the in-flight cap (--max-in-flight) "
                               "was reached, so the server did not keep up with the rate (saturated); they count "
                               "in the latency as misses, at least until the window's end"]
    step.capped = step.not_sent = 0  # the same answers with every arrival sent: met
    step.censored_offsets.reset()
    assert step_meets(step, objectives, max_error_rate=0.0) == (True, [])


def test_min_samples_misses_a_percentile_once_more_samples_exceed_its_target_than_it_allows():
    """p99 allows 100 of its 10,000 samples over the target: with 101 over, no later samples could bring it back,
    so it is missed (judged) from 150 samples; with 90 over of 150 it is still unjudged."""
    from ipsbench.loadgen.histograms import new_histogram

    objectives = [parse_objective("p99=100ms")]
    slow = new_histogram()
    slow.record_value(200_000, 150)
    (p99, _error_rate) = judge(objectives, slow, 0.0, 150, 0.0)
    assert p99["enough_samples"] and not p99["met"]
    assert p99["why"] == "p99 above 100ms: 150 of 150 samples over it, more than the 100 of 10,000 p99 allows"
    mixed = new_histogram()
    mixed.record_value(200_000, 90)
    mixed.record_value(1_000, 60)
    (p99, _error_rate) = judge(objectives, mixed, 0.0, 150, 0.0)
    assert not p99["enough_samples"] and not p99["met"] and p99["why"] == "150 samples, 10000 needed to claim p99"


def test_count_windows_end_after_their_requests_and_are_timed_by_them():
    """--window-requests 10: each trial holds the next 10 completions, whenever they come; its images/sec is over
    its own span (from the previous trial's last completion to its own)."""
    step = StepRecord(index=0, concurrency=1, warmup_s=1.0, window_s=5.0, start_ns=0, trials_max=5,
                      window_requests=10)
    done_ns = 1_000 * MS
    for number in range(45):
        done_ns += (10 if number < 20 else 20) * MS  # the first two trials twice as fast as the rest
        step.record_issued()
        step.record_ok(done_ns - MS, done_ns, images=1)
    assert [sum(trial.counts.values()) for trial in step.trials] == [10, 10, 10, 10, 5]
    rates = [step.trial_figures(number)["images_per_s"] for number in range(4)]
    assert rates == pytest.approx([100.0, 100.0, 50.0, 50.0])
    step.end_after_trials(4, stable=True)
    assert step.window_end_ns == 1_000 * MS + 20 * 10 * MS + 20 * 20 * MS + 1  # the 40th completion's, just past
    settled = step.settled()
    assert settled.window_counts[Outcome.OK] == 30 and settled.measured_window_s == pytest.approx(0.5, abs=1e-6)
    merged = decode_step(encode_step(step), start_ns=0)
    assert merged.trial_figures(3)["images_per_s"] == pytest.approx(50.0)
