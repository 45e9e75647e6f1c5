"""--request-log against a real ipsbench-serve and real ipsbench-load runs: one CSV row per request that ended, and the
report's percentiles within 1 % of exact ones computed from those raw timings (L12), in one process, open loop,
over worker processes, with failures, and after SIGTERM."""
import csv
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from load_helpers import assert_accounted, write_failing_image_model

from ipsbench.loadgen.report.schema import COUNT_FIELDS, PERCENTILES

QUICK = ("--warmup", "300ms", "--drain", "5s")
COLUMNS = ["step", "outcome", "code", "measured", "trial", "intended_us", "sent_us", "done_us", "latency_us", "images"]


def read_log(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def hdr_percentile(values: np.ndarray, percentile: float) -> float:
    """The exact value at ``percentile`` by the definition the report's histograms use (hdrhistogram's
    ``get_target_count_at_percentile``): the sample of rank round(p / 100 * n), at least 1, in sorted order."""
    ordered = np.sort(values)
    rank = max(int(percentile * len(ordered) / 100 + 0.5), 1)
    return float(ordered[rank - 1])


def assert_close(reported: float, exact: float, what: str) -> None:
    assert abs(reported - exact) <= max(0.01 * exact, 1.0), (what, reported, exact)


def assert_matches_exact(summary: dict, latencies_us: list[int]) -> None:
    """Every reported percentile, the mean, min and max within 1 % (1 us for tiny values) of the exact ones."""
    values = np.array(latencies_us, dtype=np.float64)
    assert summary["count"] == len(values) > 0
    for name, percentile in PERCENTILES:
        assert_close(summary[name], hdr_percentile(values, percentile), name)
    assert_close(summary["max"], values.max(), "max")
    assert_close(summary["min"], values.min(), "min")
    assert_close(summary["mean"], values.mean(), "mean")


def rows_of(rows: list[dict], step: dict) -> list[dict]:
    return [row for row in rows if int(row["step"]) == step["index"] + 1]


def assert_rows_account_for(step: dict, rows: list[dict]) -> None:
    """One row per issued request, as many per outcome as the report counts."""
    assert len(rows) == step["issued"]
    by_outcome = Counter(row["outcome"] for row in rows)
    outcomes = COUNT_FIELDS[1:]
    assert {name: by_outcome.get(name, 0) for name in outcomes} == {name: step[name] for name in outcomes}


def reported_latencies(step: dict, rows: list[dict], outcomes=("ok",)) -> list[int]:
    """The latencies of the rows the report's figures cover: measured, and for a step judged for stability, in
    its last 3 trials (the ones the report takes the step's figures from)."""
    stability = step.get("stability")
    trials = None if stability is None else range(stability["trials"] - 2, stability["trials"] + 1)
    chosen = []
    for row in rows:
        if row["outcome"] not in outcomes or row["measured"] != "1":
            continue
        if trials is not None and int(row["trial"]) not in trials:
            continue
        chosen.append(int(row["latency_us"]))
    return chosen


def test_closed_loop_percentiles_are_within_one_percent_of_the_raw_timings(server, start_load, tmp_path):
    log = tmp_path / "logs" / "requests.csv"
    run = start_load(server.grpc_url, "--concurrency", "1,2", "--duration", "700ms", "--max-trials", "3",
                     "--stability", "1.0", "--request-log", str(log), *QUICK)
    # Three windows per level, so that the log's trial column is what picks the report's figures; a tolerance of
    # 100 % makes any three windows with successes agree, so the level is stable after its third window.
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    assert report["valid"] and report["verdict"] == "PASS"
    assert_accounted(report)
    assert report["settings"]["request_log"] == str(log)
    assert report["request_log"]["files"] == [str(log)] and report["request_log"]["columns"] == COLUMNS
    rows = read_log(log)
    assert len(rows) == report["totals"]["issued"]
    for step in report["steps"]:
        step_rows = rows_of(rows, step)
        assert_rows_account_for(step, step_rows)
        assert step["stability"]["trials"] == 3
        latencies = reported_latencies(step, step_rows)
        assert len(latencies) == step["window_requests"]["ok"]
        assert_matches_exact(step["latency_us"], latencies)
        for row in step_rows:
            assert row["intended_us"] == "" and row["code"] == "" and int(row["images"]) == 1
            sent, done = int(row["sent_us"]), int(row["done_us"])
            assert 0 <= sent <= done
            if row["measured"] == "1":  # closed loop: timed from the send
                assert abs(int(row["latency_us"]) - (done - sent)) <= 1
                assert 1 <= int(row["trial"]) <= 3
            else:
                assert row["latency_us"] == "" and row["trial"] == ""
    # Steps follow one another in the log's time: every request of step 2 was sent after step 1's last one.
    first, second = (rows_of(rows, step) for step in report["steps"])
    assert max(int(row["sent_us"]) for row in first) < min(int(row["sent_us"]) for row in second)
    assert f"Per-request log (one CSV row per request, raw timings): {log}" in (run.out / "report.md").read_text()


def test_open_loop_latency_is_from_the_intended_time(server, start_load, tmp_path):
    log = tmp_path / "requests.csv"
    run = start_load(server.grpc_url, "--rate", "40", "--duration", "2s", "--request-log", str(log), *QUICK,
                     scenario="rate")
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    (step,) = report["steps"]
    rows = read_log(log)
    assert_rows_account_for(step, rows)
    measured = [row for row in rows if row["measured"] == "1"]
    assert measured and all(row["outcome"] == "ok" for row in measured)
    for row in measured:
        intended, sent, done = int(row["intended_us"]), int(row["sent_us"]), int(row["done_us"])
        assert intended <= sent + 1 and sent <= done
        assert abs(int(row["latency_us"]) - (done - intended)) <= 1
        assert row["trial"] == ""
    assert all(row["intended_us"] != "" for row in rows)
    assert_matches_exact(step["latency_us"], reported_latencies(step, rows))


def test_each_worker_writes_its_own_log_and_their_union_matches_the_merged_report(server, start_load, tmp_path):
    log = tmp_path / "requests.csv"
    run = start_load(server.grpc_url, "--concurrency", "2", "--duration", "1500ms", "--processes", "2",
                     "--request-log", str(log), *QUICK)
    assert run.finish(timeout=120) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    files = [tmp_path / "requests.worker0.csv", tmp_path / "requests.worker1.csv"]
    assert sorted(report["request_log"]["files"]) == [str(path) for path in files]
    assert not log.exists()  # the master records no requests and writes no log
    (step,) = report["steps"]
    union = []
    for worker in report["workers"]:
        rows = read_log(tmp_path / f"requests.worker{worker['index']}.csv")
        (own,) = worker["steps"]
        assert len(rows) == own["issued"] > 0
        assert Counter(row["outcome"] for row in rows)["ok"] == own["ok"]
        union += rows
    assert_rows_account_for(step, union)
    assert_matches_exact(step["latency_us"], reported_latencies(step, union))


def test_failed_requests_have_rows_with_their_status_code(tmp_path, start_server, start_load):
    pytest.importorskip("onnx")
    repository = tmp_path / "models"
    write_failing_image_model(repository, "broken")
    target = start_server(repository)
    log = tmp_path / "requests.csv"
    run = start_load(target.grpc_url, "--concurrency", "2", "--warmup", "0s", "--duration", "1s",
                     "--request-log", str(log), model="broken")
    assert run.finish(timeout=60) == 2, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    (step,) = report["steps"]
    rows = read_log(log)
    assert_rows_account_for(step, rows)
    assert step["failed"] > 0 and step["ok"] == 0
    by_code = Counter((row["outcome"], row["code"]) for row in rows)
    assert by_code == Counter({(error["outcome"], error["code"]): error["count"] for error in step["errors"]})
    assert set(by_code) == {("failed", "INTERNAL")}
    # Failed requests in the window are timed too (the report's latency over all completed requests).
    assert_matches_exact(step["latency_all_us"], reported_latencies(step, rows, outcomes=("failed",)))


def test_sigterm_still_leaves_a_row_for_every_issued_request(server, start_load, tmp_path):
    log = tmp_path / "requests.csv"
    run = start_load(server.grpc_url, "--concurrency", "4", "--warmup", "300ms", "--duration", "30s",
                     "--drain", "0s", "--request-log", str(log))
    run.wait_in_window()  # into the measured window on purpose
    # The server stops answering, so the requests in flight at the signal are abandoned (no drain) and must still
    # have their rows.
    server.process.send_signal(signal.SIGSTOP)
    try:
        run.process.send_signal(signal.SIGTERM)  # each user has its request in flight at a stopped server
        assert run.finish(timeout=60) == 143, run.stdout + run.stderr()
    finally:
        server.process.send_signal(signal.SIGCONT)
    report = run.report()
    assert report["interrupted_by"] == "SIGTERM"
    assert_accounted(report)
    (step,) = report["steps"]
    rows = read_log(log)
    assert_rows_account_for(step, rows)
    assert step["ok"] > 0 and step["abandoned"] > 0
    for row in rows:
        if row["outcome"] == "abandoned":
            assert row["done_us"] == row["latency_us"] == "" and row["measured"] == "0" and row["code"] == ""
            assert int(row["sent_us"]) > 0  # when it went out is known, only how it ended is not
    assert_matches_exact(step["latency_us"], reported_latencies(step, rows))


def test_a_log_that_cannot_be_opened_is_a_setup_error(server, start_load, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    run = start_load(server.grpc_url, "--concurrency", "1", "--duration", "1s",
                     "--request-log", str(blocker / "requests.csv"), *QUICK)
    assert run.finish(timeout=60) == 2, run.stdout + run.stderr()
    assert f"--request-log {blocker / 'requests.csv'}" in run.stderr()
    assert not (run.out / "report.json").exists()
