"""ipsbench-load sweep against a real ipsbench-serve: what a user sees in the table, report.json and exit code."""
import datetime
import signal
import time

import pytest
from load_helpers import assert_accounted, write_failing_image_model

SHORT = ("--warmup", "500ms", "--duration", "1500ms", "--drain", "5s")


def test_sweep_reports_throughput_latency_and_every_request(server, start_load):
    run = start_load(server.grpc_url, "--concurrency", "1,2", *SHORT)
    assert run.finish(timeout=60) == 0, run.stdout + run.stderr()

    report = run.report()
    assert report["valid"] and report["status"] == "complete"
    assert report["model"]["input"]["shape"] == [-1, 3, 64, 64]
    assert report["payload"]["request_shape"] == [1, 3, 64, 64]
    assert [step["concurrency"] for step in report["steps"]] == [1, 2]
    assert_accounted(report)
    for step in report["steps"]:
        assert step["window_s"] == pytest.approx(1.5) and step["warmup_s"] == 0.5
        # Wall-clock bounds, to line the window up with GPU samples or server logs.
        started = datetime.datetime.fromisoformat(report["started_at"]).timestamp()
        assert started - 1 <= step["window_start_unix"] <= started + report["duration_s"]
        assert step["window_end_unix"] - step["window_start_unix"] == pytest.approx(1.5, abs=0.01)
        assert step["images_per_s"] > 0 and step["images_ok"] == step["window_requests"]["ok"]
        assert step["errors_total"] == 0 and step["abandoned"] == 0, run.stdout + run.stderr()
        latency = step["latency_us"]
        assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"]
        assert latency["p99"] <= latency["p99.9"] <= latency["max"]

    assert (run.out / "report.md").read_text().startswith("# ipsbench-load sweep: resnet18")
    header = next(line for line in run.stdout.splitlines() if "concurrency" in line)
    assert header.split() == ["concurrency", "requests", "images/sec", "p50", "ms", "p90", "ms", "p95", "ms",
                              "p99", "ms", "errors"]
    assert run.stdout.rstrip().endswith(f"report: {run.out / 'report.md'}")


def test_images_per_request_multiply_images(server, start_load):
    run = start_load(server.grpc_url, "--concurrency", "2", "--images-per-request", "4", "--distinct-requests", "2",
                     *SHORT)
    assert run.finish(timeout=60) == 0, run.stdout + run.stderr()
    step = run.report()["steps"][0]
    assert step["images_ok"] == 4 * step["window_requests"]["ok"] > 0
    assert step["images_per_s"] == pytest.approx(4 * step["requests_per_s"], rel=1e-3)


def test_deadline_failures_are_counted_with_their_code(server, start_load):
    run = start_load(server.grpc_url, "--concurrency", "2", "--deadline", "100us", *SHORT)
    assert run.finish(timeout=60) == 2, run.stdout + run.stderr()
    report = run.report()
    assert not report["valid"]
    assert_accounted(report)
    step = report["steps"][0]
    assert step["deadline"] > 0
    assert {error["code"] for error in step["errors"]} == {"DEADLINE_EXCEEDED"}


def test_requests_failing_in_the_server_are_counted_failed_by_code(tmp_path, start_server, start_load):
    pytest.importorskip("onnx")
    repository = tmp_path / "models"
    write_failing_image_model(repository, "broken")
    target = start_server(repository)
    run = start_load(target.grpc_url, "--concurrency", "2", "--warmup", "0s", "--duration", "1s", model="broken")
    assert run.finish(timeout=60) == 2, run.stdout + run.stderr()

    report = run.report()
    assert not report["valid"] and "no successful request at all" in report["invalid_reasons"]
    assert_accounted(report)
    (step,) = report["steps"]
    assert step["failed"] == step["issued"] > 0 and step["ok"] == 0
    (error,) = step["errors"]  # one row per code and message, request ids masked
    assert error["code"] == "INTERNAL" and error["outcome"] == "failed" and error["count"] == step["failed"]
    assert step["latency_us"] is None and step["latency_all_us"]["count"] > 0


def test_server_killed_mid_run_is_counted_and_invalid(model_repository, start_server, start_load):
    target = start_server(model_repository)
    run = start_load(target.grpc_url, "--concurrency", "2,2", *SHORT)
    run.wait_in_window()  # mid-step on purpose
    target.process.kill()
    assert run.finish(timeout=60) == 2, run.stdout + run.stderr()

    report = run.report()
    assert not report["valid"]
    assert_accounted(report)
    assert report["totals"]["ok"] > 0
    codes = {error["code"] for step in report["steps"] for error in step["errors"]}
    assert "UNAVAILABLE" in codes
    # UNAVAILABLE from a dead server is UNREACHABLE; REJECTED is the server's admission control alone
    assert report["totals"]["unreachable"] > 0 and report["totals"]["rejected"] == 0
    assert "INVALID" in run.stdout


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_still_writes_a_complete_report(server, start_load, signum, exit_code):
    run = start_load(server.grpc_url, "--concurrency", "2,4", "--warmup", "500ms", "--duration", "30s")
    run.wait_in_window()  # into the measured window on purpose
    run.process.send_signal(signum)
    assert run.finish(timeout=30) == exit_code, run.stdout + run.stderr()

    report = run.report()
    assert report["status"] == "interrupted" and report["interrupted_by"] == signum.name
    assert_accounted(report)
    (step,) = report["steps"]
    assert step["interrupted"] and 0 < step["window_s"] < 30
    assert step["ok"] > 0 and step["images_per_s"] > 0
    assert (run.out / "report.md").is_file()
    assert "report: " in run.stdout
