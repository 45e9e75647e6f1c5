"""``ipsbench-load --shared-memory system`` against a real ipsbench-serve: the same-host path, its regions created,
registered, used, then unregistered and removed however the run ends; refused for a target on another host."""
import glob
import os
import signal

import pytest
import tritonclient.grpc as grpcclient
from load_helpers import assert_accounted

QUICK = ("--warmup", "300ms", "--duration", "1s", "--drain", "5s")
RUN_TIMEOUT_S = 180


def leftover_objects(pid: int) -> list[str]:
    """The shared-memory objects a load generator process created and did not remove."""
    return glob.glob(f"/dev/shm/ipsbench-load-{pid}-*")


def registered(url: str) -> list[str]:
    with grpcclient.InferenceServerClient(url) as client:
        return list(client.get_system_shared_memory_status().regions)


def successes(url: str) -> int:
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics("resnet18").model_stats
    return sum(s.inference_stats.success.count for s in stats)


def test_a_sweep_over_system_shared_memory(server, start_load):
    before = successes(server.grpc_url)
    run = start_load(server.grpc_url, "--shared-memory", "system", "--concurrency", "1,2", "--distinct-requests", "3",
                     *QUICK)
    code = run.finish(RUN_TIMEOUT_S)
    report = run.report()
    assert code == 0, run.stderr()
    assert_accounted(report)
    payload = report["payload"]
    assert payload["transfer"] == "system_shared_memory"
    assert payload["shared_memory"]["regions"] == 2
    # The messages carry no tensor: a 64x64 FP32 image is 49,152 bytes; the request names its region instead.
    assert payload["request_bytes"] < 1024
    ok = report["totals"]["ok"]
    assert ok > 0 and successes(server.grpc_url) - before >= ok
    assert "through system shared memory" in (run.out / "report.md").read_text()
    assert not registered(server.grpc_url)
    assert not leftover_objects(run.process.pid)


def test_an_in_band_run_says_so(server, start_load):
    run = start_load(server.grpc_url, "--concurrency", "1", *QUICK)
    assert run.finish(RUN_TIMEOUT_S) == 0, run.stderr()
    assert run.report()["payload"]["transfer"] == "grpc"
    assert "tensors sent in the gRPC messages" in (run.out / "report.md").read_text()


@pytest.mark.parametrize("target", ["192.0.2.1:8001", "[2001:db8::1]:8001"])
def test_a_target_on_another_host_is_refused_before_any_load(start_load, target):
    run = start_load(target, "--shared-memory", "system", "--concurrency", "1", *QUICK)
    assert run.finish(RUN_TIMEOUT_S) == 2
    assert "--shared-memory system needs a target on this host" in run.stderr()
    assert not (run.out / "report.json").exists()


def test_sigterm_mid_run_still_unregisters_and_removes_the_regions(server, start_load):
    run = start_load(server.grpc_url, "--shared-memory", "system", "--concurrency", "1", "--warmup", "0s",
                     "--duration", "60s", "--drain", "5s")
    run.wait_in_window()
    assert len(registered(server.grpc_url)) == 2 and len(leftover_objects(run.process.pid)) == 2
    run.process.send_signal(signal.SIGTERM)
    run.finish(RUN_TIMEOUT_S)
    report = run.report()
    assert report["interrupted_by"] == "SIGTERM"
    assert_accounted(report)
    assert not registered(server.grpc_url)
    assert not leftover_objects(run.process.pid)


def test_regions_the_target_refuses_fail_the_run_and_leave_nothing(model_repository, start_server, start_load):
    server = start_server(model_repository, "--shm-max-regions", "1")
    run = start_load(server.grpc_url, "--shared-memory", "system", "--concurrency", "1", *QUICK)
    assert run.finish(RUN_TIMEOUT_S) == 2
    assert "the target refused shared memory region" in run.stderr() and "RESOURCE_EXHAUSTED" in run.stderr()
    assert not registered(server.grpc_url)
    assert not leftover_objects(run.process.pid)


def test_worker_processes_each_bring_and_remove_their_own_regions(server, start_load):
    run = start_load(server.grpc_url, "--shared-memory", "system", "--processes", "2", "--concurrency", "2",
                     "--warmup", "0s", "--duration", "60s", "--drain", "5s")
    run.wait_in_window()
    names = registered(server.grpc_url)
    # Two per worker (inputs, outputs); the master sends nothing and registers nothing.
    assert len(names) == 4 and not leftover_objects(run.process.pid), names
    run.process.send_signal(signal.SIGINT)
    run.finish(RUN_TIMEOUT_S)
    assert_accounted(run.report())
    assert run.report()["payload"]["transfer"] == "system_shared_memory"
    assert not registered(server.grpc_url)
    assert not [name for name in names if os.path.exists(f"/dev/shm/{name}")]  # the workers removed theirs
