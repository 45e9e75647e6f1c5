"""The recorder accounts for every request and its percentiles match exact ones from raw timings."""
import grpc
import numpy as np
import pytest

from ipsbench.loadgen.recorder import MAX_ERROR_KINDS, error_message_kind, OVERFLOW_MESSAGE, Outcome, RunRecorder, StepRecord
from ipsbench.loadgen.step_encoding import decode_step, encode_step, merge_step
from ipsbench.loadgen.report.schema import PERCENTILES
from ipsbench.loadgen.report.steps import latency_summary

MS = 1_000_000  # ns


def step_with_window(warmup_s=1.0, window_s=10.0) -> StepRecord:
    return StepRecord(index=0, concurrency=4, warmup_s=warmup_s, window_s=window_s, start_ns=0)


def exact_percentile(latencies_us: np.ndarray, percentile: float) -> float:
    """Nearest-rank percentile, the definition HDR histograms follow."""
    return float(np.percentile(latencies_us, percentile, method="inverted_cdf"))


@pytest.mark.parametrize("seed", [0, 1])
def test_percentiles_within_one_percent_of_exact_values(seed):
    rng = np.random.default_rng(seed)
    latencies_ns = (rng.lognormal(mean=np.log(4e6), sigma=0.6, size=20_000)).astype(np.int64)  # ~4 ms median
    step = step_with_window()
    sent = 2_000 * MS  # inside the window
    for latency in latencies_ns:
        step.record_issued()
        step.record_ok(sent, sent + int(latency), images=2)

    summary = latency_summary(step.histograms[Outcome.OK])
    exact_us = latencies_ns / 1000
    assert summary["count"] == len(latencies_ns)
    for name, percentile in PERCENTILES:
        exact = exact_percentile(exact_us, percentile)
        assert abs(summary[name] - exact) <= 0.01 * exact, (name, summary[name], exact)
    assert abs(summary["max"] - exact_us.max()) <= 0.01 * exact_us.max()
    assert abs(summary["min"] - exact_us.min()) <= 0.01 * exact_us.min()
    assert abs(summary["mean"] - exact_us.mean()) <= 0.01 * exact_us.mean()
    assert summary["p50"] <= summary["p90"] <= summary["p95"] <= summary["p99"] <= summary["p99.9"] <= summary["max"]


def test_every_outcome_is_counted_and_the_identity_holds():
    step = step_with_window()
    sent = 2_000 * MS
    outcomes = [
        (None, None),
        (grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size"),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: "
                                      "Failed to connect to remote host: Connection refused"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        (grpc.StatusCode.CANCELLED, "Cancelled"),
        (grpc.StatusCode.INVALID_ARGUMENT, "unexpected shape for input 'input'"),
        (grpc.StatusCode.INTERNAL, "internal error"),
    ]
    for code, message in outcomes:
        step.record_issued()
        if code is None:
            step.record_ok(sent, sent + 5 * MS, images=1)
        else:
            step.record_error(code, message, sent, sent + 5 * MS)
    step.record_issued()
    step.record_client_error(RuntimeError("boom"), sent, sent + MS)
    step.record_issued()
    step.record_abandoned()

    assert step.issued == 9
    assert {o: step.counts[o] for o in Outcome} == {
        Outcome.OK: 1, Outcome.REJECTED: 1, Outcome.UNREACHABLE: 1, Outcome.DEADLINE: 1, Outcome.CANCELLED: 1,
        Outcome.FAILED: 3, Outcome.ABANDONED: 1,
    }
    assert step.identity_holds()
    codes = {(outcome, code): kind.count for (outcome, code, _), kind in step.errors.items()}
    assert codes == {
        ("rejected", "UNAVAILABLE"): 1, ("unreachable", "UNAVAILABLE"): 1, ("deadline", "DEADLINE_EXCEEDED"): 1,
        ("cancelled", "CANCELLED"): 1, ("failed", "INVALID_ARGUMENT"): 1, ("failed", "INTERNAL"): 1, ("failed", "CLIENT"): 1,
    }
    step.record_issued()  # issued but never resolved: the identity no longer holds
    assert not step.identity_holds()


def test_warmup_and_late_completions_are_counted_but_not_measured():
    step = step_with_window(warmup_s=1.0, window_s=2.0)  # window: [1 s, 3 s)
    for done_ms in (500, 999, 1000, 2000, 2999, 3000, 3500):
        step.record_issued()
        step.record_ok(done_ms * MS - 4 * MS, done_ms * MS, images=3)
    assert step.counts[Outcome.OK] == 7
    assert step.window_counts[Outcome.OK] == 3
    assert step.window_images_ok == 9
    assert step.histograms[Outcome.OK].get_total_count() == 3
    assert step.measured_window_s == 2.0
    assert step.issuing(2_999 * MS) and not step.issuing(3_000 * MS)


def test_interrupt_ends_the_window_and_issuing_early():
    recorder = RunRecorder(clock_ns=iter([0, 0, 1_500 * MS]).__next__)
    step = recorder.open_step(concurrency=2, warmup_s=1.0, window_s=10.0)
    recorder.interrupt()
    assert recorder.current is None
    assert step.interrupted and step.measured_window_s == 0.5
    assert not step.issuing(1_600 * MS)


def test_error_kinds_are_bounded():
    step = step_with_window()
    for number in range(MAX_ERROR_KINDS + 10):
        step.record_issued()
        step.record_error(grpc.StatusCode.INTERNAL, f"error {number}", 0, MS)
    assert len(step.errors) == MAX_ERROR_KINDS + 1
    assert step.errors[("failed", "INTERNAL", OVERFLOW_MESSAGE)].count == 10
    assert sum(kind.count for kind in step.errors.values()) == MAX_ERROR_KINDS + 10


def test_encoded_steps_merge_like_one_recorder():
    rng = np.random.default_rng(7)
    latencies_ns = rng.integers(1 * MS, 50 * MS, size=4_000)
    whole, first, second = step_with_window(), step_with_window(), step_with_window()
    for number, latency in enumerate(latencies_ns):
        for step in (whole, first if number % 2 else second):
            step.record_issued()
            step.record_ok(2_000 * MS, 2_000 * MS + int(latency), images=1)
            step.record_issued()
            step.record_error(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size", 2_000 * MS, 2_001 * MS)

    merged = decode_step(encode_step(first))
    merge_step(merged, encode_step(second))

    assert merged.issued == whole.issued and merged.counts == whole.counts
    assert merged.window_counts == whole.window_counts and merged.window_images_ok == whole.window_images_ok
    assert merged.identity_holds()
    assert latency_summary(merged.histograms[Outcome.OK]) == latency_summary(whole.histograms[Outcome.OK])
    assert {k: v.count for k, v in merged.errors.items()} == {k: v.count for k, v in whole.errors.items()}
    with pytest.raises(ValueError, match="cannot merge step"):
        merge_step(merged, {**encode_step(first), "index": 3})


def test_request_ids_in_error_messages_do_not_split_error_rows():
    step = step_with_window()
    for request_id in ("b8f382ee2a074b90", "9fb6a57fc8344fe7", "123e4567-e89b-12d3-a456-426614174000"):
        step.record_issued()
        step.record_error(grpc.StatusCode.INTERNAL, f"internal server error (request id {request_id})", 0, MS)
    assert [(key, kind.count) for key, kind in step.errors.items()] == [
        (("failed", "INTERNAL", "internal server error (request id <id>)"), 3)
    ]
    assert error_message_kind("Exceeds maximum queue size") == "Exceeds maximum queue size"
    assert error_message_kind("x" * 1000) == "x" * 200


def open_loop_step(warmup_s=1.0, window_s=2.0) -> StepRecord:
    return StepRecord(index=0, concurrency=1, warmup_s=warmup_s, window_s=window_s, start_ns=0, rate_per_s=10.0)


def test_open_loop_latency_counts_from_the_intended_time_and_service_time_from_the_send():
    step = open_loop_step()  # window: [1 s, 3 s)
    sends = [  # intended, sent, done (ms)
        (1_000, 1_000, 1_010),  # on time
        (1_100, 1_600, 1_610),  # held back 500 ms: 510 ms latency, 10 ms service
        (2_990, 2_991, 3_200),  # intended in the window, done after it: still measured
        (900, 900, 1_100),  # intended in the warm-up: counted, not measured
    ]
    for intended, sent, done in sends:
        step.record_scheduled(intended * MS)
        step.record_issued()
        step.record_send(intended * MS, sent * MS)
        step.record_ok(sent * MS, done * MS, images=1, intended_ns=intended * MS)

    latency = latency_summary(step.histograms[Outcome.OK])
    service = latency_summary(step.service_histogram)
    assert latency["count"] == service["count"] == 3
    assert latency["max"] == pytest.approx(510_000, rel=1e-3) and service["max"] == pytest.approx(209_000, rel=1e-3)
    assert latency["min"] == pytest.approx(10_000, rel=1e-3) and service["min"] == pytest.approx(10_000, rel=1e-3)
    assert step.scheduled == 3 and step.window_sends == 3  # the warm-up send is outside the window
    assert step.late_sends == 1  # 500 ms late; 1 ms late is within the tolerance
    assert step.lateness_histogram.get_max_value() == pytest.approx(500_000, rel=1e-3)
    assert step.window_counts[Outcome.OK] == 3  # throughput counts completions inside the window (not the last)
    assert step.identity_holds()


def test_L21_every_arrival_of_the_window_is_counted_sent_or_not_sent():
    """An arrival due just before the window closes and sent just after it is still one of the window's sends;
    one due in the warm-up and sent in the window is not: scheduled = sent + not sent, arrival by arrival."""
    step = open_loop_step()  # window: [1 s, 3 s)
    for intended, sent in ((2_999, 3_004), (990, 1_001), (1_500, 1_500)):
        step.record_scheduled(intended * MS)
        step.record_send(intended * MS, sent * MS)
    step.record_scheduled(2_000 * MS)
    step.record_not_sent(2_000 * MS, capped=True)
    assert (step.scheduled, step.window_sends, step.not_sent, step.capped) == (3, 2, 1, 1)
    assert step.scheduled == step.window_sends + step.not_sent
    assert step.late_sends == 1  # 5 ms after its time


def test_open_loop_errors_are_timed_from_the_intended_time_too():
    step = open_loop_step()
    step.record_issued()
    step.record_error(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size", 1_500 * MS, 1_501 * MS,
                      intended_ns=1_200 * MS)
    assert step.histograms[Outcome.REJECTED].get_max_value() == pytest.approx(301_000, rel=1e-3)
    assert step.service_histogram.get_total_count() == 0


def test_open_loop_state_encodes_and_merges():
    first, second = open_loop_step(), open_loop_step()
    for step, late_ms in ((first, 0), (second, 50)):
        step.record_scheduled(1_500 * MS)
        step.record_issued()
        step.record_send(1_500 * MS, (1_500 + late_ms) * MS)
        step.record_ok((1_500 + late_ms) * MS, 1_600 * MS, images=1, intended_ns=1_500 * MS)
        step.record_not_sent(2_900 * MS)
        step.record_not_sent(2_950 * MS, capped=True)
        step.record_not_sent(500 * MS)  # due in the warm-up: not one of the window's arrivals
    merged = decode_step(encode_step(first))
    merge_step(merged, encode_step(second))
    assert merged.rate_per_s == 10.0
    assert (merged.scheduled, merged.window_sends, merged.late_sends, merged.not_sent) == (2, 2, 1, 4)
    assert merged.capped == 2
    assert merged.service_histogram.get_total_count() == 2
    assert merged.lateness_histogram.get_max_value() == pytest.approx(50_000, rel=1e-3)
    # the four not sent in the window, censored at its end (3 s): 100 ms and 50 ms from their intended times
    censored = merged.censored_latencies()
    assert censored.get_total_count() == 4
    # to within 0.05 % of the 2 s window
    assert censored.get_min_value() == pytest.approx(50_000, abs=1_000)
    assert censored.get_max_value() == pytest.approx(100_000, abs=1_000)


def test_L21_unsent_and_unanswered_arrivals_are_censored_at_the_window_end_even_a_shortened_one():
    step = open_loop_step()  # window [1 s, 3 s)
    step.record_not_sent(1_200 * MS, capped=True)
    step.record_issued()
    step.record_send(1_400 * MS, 1_400 * MS)
    step.record_abandoned(1_400 * MS, 1_400 * MS)  # sent, never answered
    step.record_abandoned(1_450 * MS)  # closed loop style: no intended time, nothing to censor
    assert step.censored_offsets.get_total_count() == 2
    step.interrupt(2_000 * MS)  # stopped early: the window ends at 2 s, and so do the bounds
    bounds = step.censored_latencies()
    # the window's end less each arrival's offset, at the histograms' precision (3 significant digits)
    assert bounds.get_max_value() == pytest.approx(800_000, rel=2e-3)
    assert bounds.get_min_value() == pytest.approx(600_000, rel=2e-3)


def test_merging_an_empty_histogram_keeps_the_minimum():
    busy, idle = step_with_window(), step_with_window()
    busy.record_issued()
    busy.record_ok(2_000 * MS, 2_007 * MS, images=1)
    merged = decode_step(encode_step(busy))
    merge_step(merged, encode_step(idle))
    assert merged.histograms[Outcome.OK].get_min_value() == pytest.approx(7_000, rel=1e-3)


def test_the_request_log_has_a_row_per_ended_request_with_the_latency_as_recorded(tmp_path):
    """Each outcome gets its row, with its code, whether it was measured, the trial it counted in (a closed-loop
    step judged for stability), times in us from the first step's start and the histogram's latency."""
    from ipsbench.loadgen.request_log import COLUMNS, open_request_log, worker_path

    log = open_request_log(tmp_path / "out" / "requests.csv", images_per_request=2)
    ticks = iter([0, 100 * MS, 10_000 * MS])
    recorder = RunRecorder(clock_ns=lambda: next(ticks))
    recorder.request_log = log
    closed = recorder.open_step(concurrency=2, warmup_s=1.0, window_s=1.0, trials_max=3)  # at 100 ms: [1.1, 4.1) s
    for sent_ms, done_ms in ((200, 300), (1_200, 1_204.4), (2_500, 2_600)):  # warm-up, trial 1, trial 2
        closed.record_issued()
        closed.record_ok(sent_ms * MS, int(done_ms * MS), images=2)
    closed.record_issued()
    closed.record_error(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size", 1_500 * MS, 1_501 * MS)
    closed.record_issued()
    closed.record_client_error(RuntimeError("boom"), 1_600 * MS, 1_600 * MS)
    closed.record_issued()
    closed.record_abandoned(sent_ns=3_000 * MS)
    recorder.close_step()
    rate = recorder.open_step(concurrency=1, warmup_s=0.0, window_s=1.0, rate_per_s=5.0)  # at 10 s: [10, 11) s
    rate.record_issued()
    rate.record_ok(10_300 * MS, 10_310 * MS, images=2, intended_ns=10_100 * MS)
    rate.record_issued()
    rate.record_abandoned()
    recorder.close_request_log()
    recorder.close_request_log()  # closing twice is harmless

    import csv

    with (tmp_path / "out" / "requests.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == list(COLUMNS)
    assert rows[1:] == [
        ["1", "ok", "", "0", "", "", "100000", "200000", "", "2"],
        ["1", "ok", "", "1", "1", "", "1100000", "1104400", "4400", "2"],
        ["1", "ok", "", "1", "2", "", "2400000", "2500000", "100000", "2"],
        ["1", "rejected", "UNAVAILABLE", "1", "1", "", "1400000", "1401000", "1000", "2"],
        ["1", "failed", "CLIENT", "1", "1", "", "1500000", "1500000", "1", "2"],  # the histogram's lowest value
        ["1", "abandoned", "", "0", "", "", "2900000", "", "", "2"],
        ["2", "ok", "", "1", "", "10000000", "10200000", "10210000", "210000", "2"],
        ["2", "abandoned", "", "0", "", "", "", "", "", "2"],
    ]
    assert closed.histograms[Outcome.OK].get_total_count() == 2 and closed.identity_holds()
    assert worker_path("logs/requests.csv", 3).as_posix() == "logs/requests.worker3.csv"
    assert worker_path("requests", 0).as_posix() == "requests.worker0"


def test_a_request_log_that_cannot_be_opened_says_where_and_why(tmp_path):
    from ipsbench.loadgen.request_log import RequestLogError, open_request_log

    (tmp_path / "file").write_text("")
    with pytest.raises(RequestLogError, match=r"--request-log .*file/requests.csv: "):
        open_request_log(tmp_path / "file" / "requests.csv", images_per_request=1)
