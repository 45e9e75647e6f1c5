"""perf_analyzer's range syntax for levels (``1:64:x2``, ``1:16:4``, ``100:1000:100``) and ``--percentile``,
as its users type them: the ranges expand to the steps that run, and a bare ``--latency-slo`` is judged at the
chosen percentile."""
import pytest
from load_helpers import assert_accounted

from ipsbench.loadgen.levels import MAX_LEVELS, expand_levels

QUICK = ("--warmup", "300ms", "--drain", "5s")


@pytest.mark.parametrize(("text", "kind", "levels"), [
    ("1:64:x2", int, (1, 2, 4, 8, 16, 32, 64)),
    ("1:16:4", int, (1, 5, 9, 13)),
    ("1:4", int, (1, 2, 3, 4)),
    ("1,2,4", int, (1, 2, 4)),
    ("1:4:x2,16,2", int, (1, 2, 4, 16, 2)),  # joined ranges; a level named twice runs twice, as in 2,2
    ("2,2", int, (2, 2)),
    ("1:10:x1.5", int, (1, 2, 3, 5, 8)),  # a fractional factor rounds to whole users, without repeats
    ("100:1000:100", float, tuple(float(rate) for rate in range(100, 1001, 100))),
    ("0.1:0.5:0.1", float, (0.1, 0.2, 0.3, 0.4, 0.5)),  # no 0.30000000000000004
    ("10:160:x2", float, (10.0, 20.0, 40.0, 80.0, 160.0)),
])
def test_ranges_expand_as_perf_analyzer_reads_them(text, kind, levels):
    assert expand_levels(text, kind) == levels


@pytest.mark.parametrize(("text", "message"), [
    ("8:1", "below its start"),
    ("1:4:0", "step must be above 0"),
    ("1:4:x1", "factor must be above 1"),
    ("0:8:x2", "must start above 0"),
    ("1:2:3:4", "3 colons"),
    (f"1:{MAX_LEVELS + 1}", f"more than {MAX_LEVELS} levels"),
    ("1:1000:5e-324", f"more than {MAX_LEVELS} levels"),  # bounded before a level is made, not after
    ("1:inf", "finite"),
])
def test_a_range_that_cannot_run_is_refused_before_any_work(text, message):
    with pytest.raises(ValueError, match=message):
        expand_levels(text, float)


def test_a_concurrency_range_runs_one_step_per_level_judged_at_the_chosen_percentile(server, start_load):
    run = start_load(server.grpc_url, "--concurrency", "1:2:x2", "--duration", "1s", "--percentile", "10",
                     "--latency-slo", "1us", *QUICK)
    code = run.finish(timeout=90)
    report = run.report()
    assert_accounted(report)
    assert [step["concurrency"] for step in report["steps"]] == [1, 2]
    latency, _error_rate = report["slo"]["objectives"]
    assert latency["name"] == "p10" and latency["target_us"] == 1 and latency["samples_needed"] == 112
    assert not latency["met"]
    # no request answers within a microsecond: each step measures until it holds p10's 112 samples, and misses it
    counts = [step["latency_us"]["count"] for step in report["steps"]]
    assert min(counts) >= 112 and report["verdict"] == "FAIL" and code == 1, counts
    assert report["settings"]["validity"]["latency_slo"] == ["p10=1us"]


def test_a_rate_range_runs_one_step_per_rate(server, start_load):
    run = start_load(server.grpc_url, "--rate", "20:40:20", "--arrival", "constant", "--duration", "1s", *QUICK,
                     scenario="rate")
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    assert [step["target_rate_per_s"] for step in report["steps"]] == [20.0, 40.0]
