"""ipsbench-load with --processes: locust master and worker processes against a real ipsbench-serve; the master
merges the workers' step state from their reports, lists the workers, and names a lost one."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from load_helpers import REPO_ROOT, assert_accounted

from ipsbench.loadgen.report.schema import COUNT_FIELDS

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
    run.wait_in_window()  # into the measured window on purpose (the master's report merges the workers')
    os.kill(pids[0], signal.SIGKILL)
    assert run.finish(timeout=90) == 2, run.stdout + run.stderr()
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_worker_started_elsewhere_joins_through_master_bind(server, start_load, tmp_path):
    """--remote-workers: the master waits on --master-bind for a worker started on its own (as on another host)."""
    port = free_port()
    run = start_load(server.grpc_url, "--concurrency", "2", "--remote-workers", "1", "--master-bind",
                     f"127.0.0.1:{port}", "--warmup", "300ms", "--duration", "1s", "--drain", "5s")
    run.wait_for_log("waiting for 1 workers from other hosts", timeout=60)
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "ipsbench.loadgen", "worker", "--master", f"127.0.0.1:{port}"],
                                  cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    report = run.report()
    assert_accounted(report)
    assert report["settings"]["remote_workers"] == 1
    (described,) = report["workers"]
    assert described["pid"] == worker.pid and described["final_report"] and described["lost"] is None
    assert described["steps"][0]["issued"] == report["steps"][0]["issued"] > 0


def test_stability_windows_merge_across_worker_processes(server, start_load):
    run = start_load(server.grpc_url, "--concurrency", "2", "--processes", "2", "--max-trials", "4",
                     "--stability", "1.0", "--warmup", "500ms", "--duration", "1s", "--drain", "5s")
    assert run.finish(timeout=120) == 0, run.stdout + run.stderr()
    report = run.report()
    assert report["verdict"] == "PASS"
    assert_accounted(report)
    (step,) = report["steps"]
    stability = step["stability"]
    assert stability["stable"] and 3 <= stability["trials"] <= 4
    assert len(stability["windows"]) == stability["trials"]
    last_three = [window["images_per_s"] for window in stability["windows"][-3:]]
    assert step["images_per_s"] == pytest.approx(sum(last_three) / 3, rel=1e-3)
    assert len(step["client"]["cpu_percent_per_process"]) == 2  # one figure per worker process
