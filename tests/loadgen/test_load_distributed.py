"""ipsbench-load with --processes: locust master and worker processes against a real ipsbench-serve; the master
merges the workers' step state from their reports, lists the workers, and names a lost one."""
import os
import re
import signal
import time

from load_helpers import assert_accounted

from loadgen.report.schema import COUNT_FIELDS

WORKER_PIDS = re.compile(r"started (\d+) worker processes: ([\d, ]+)")


def worker_pids(run) -> list[int]:
    run.wait_for_log("worker processes:", timeout=60)
    match = WORKER_PIDS.search(run.stderr())
    return [int(pid) for pid in match[2].split(", ")]


def assert_exited(pids: list[int], timeout_s: float = 15.0) -> None:
    """The workers are gone (they were children of the master, which reaped them)."""
    deadline = time.monotonic() + timeout_s
    while any(os.path.exists(f"/proc/{pid}") for pid in pids):
        assert time.monotonic() < deadline, f"worker processes {pids} still running"
        time.sleep(0.1)


def test_two_worker_processes_merge_into_one_sweep(server, start_load):
    run = start_load(server.grpc_url, "--concurrency", "2,4", "--processes", "2", "--warmup", "500ms",
                     "--duration", "2s", "--drain", "5s")
    pids = worker_pids(run)
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    assert_exited(pids)

    report = run.report()
    assert report["valid"] and report["settings"]["processes"] == 2
    assert_accounted(report)
    workers = report["workers"]
    assert sorted(worker["pid"] for worker in workers) == sorted(pids)
    assert all(worker["final_report"] and worker["lost"] is None for worker in workers)
    for step in report["steps"]:
        per_worker = [s for worker in workers for s in worker["steps"] if s["index"] == step["index"]]
        assert len(per_worker) == 2 and all(s["issued"] > 0 for s in per_worker)  # both workers sent load
        for name in COUNT_FIELDS:
            assert step[name] == sum(s[name] for s in per_worker), name
        latency = step["latency_us"]
        assert latency["count"] == step["window_requests"]["ok"] > 0
        assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"]
        assert latency["p99"] <= latency["p99.9"] <= latency["max"]
    assert "2 worker processes" in run.stdout
    assert "## Workers" in (run.out / "report.md").read_text()


def test_a_lost_worker_is_named_and_the_run_is_invalid(server, start_load):
    run = start_load(server.grpc_url, "--rate", "40", "--processes", "2", "--warmup", "500ms", "--duration", "6s",
                     "--drain", "5s", scenario="rate")
    pids = worker_pids(run)
    run.wait_for_log("step 1/1", timeout=60)
    time.sleep(1.5)  # into the measured window on purpose
    os.kill(pids[0], signal.SIGKILL)
    assert run.finish(timeout=90) == 1, run.stdout + run.stderr()
    assert_exited(pids)

    report = run.report()
    assert not report["valid"]
    assert_accounted(report)
    lost = [worker for worker in report["workers"] if worker["lost"]]
    assert [worker["pid"] for worker in lost] == [pids[0]]
    details = lost[0]["lost"]
    assert "missing" in details["because"] and details["unreported_s"] > 0
    assert details["may_have_lost_requests"] > 0  # about its share of the rate over the unreported time
    assert any(reason.startswith(f"worker {lost[0]['index']} (pid {pids[0]}) lost")
               for reason in report["invalid_reasons"])
    (step,) = report["steps"]
    survivor = next(worker for worker in report["workers"] if not worker["lost"])
    assert survivor["final_report"] and step["ok"] > 0
    assert "1 lost" in run.stdout and "INVALID" in run.stdout
