"""``ipsbench-serve --frontends N``: several front-end processes on one port, one engine process, one server to its
clients — batches across front ends, one set of statistics and metrics, load/unload everywhere, crashes survived."""

from __future__ import annotations

import os
import re
import signal
import threading
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from server_helpers import CALL_TIMEOUT_S, infer_request, metric, output_array, scrape
from tritonclient.grpc import service_pb2, service_pb2_grpc
from waiting import wait_until

FEATURES = 4
STARTED = re.compile(r"(?P<role>engine|front end (?P<index>\d+)) started \(pid (?P<pid>\d+)\)")


class Channel:
    """One client connection (the kernel gives each connection to one front end)."""

    def __init__(self, url: str) -> None:
        self.channel = grpc.insecure_channel(url, options=[("grpc.use_local_subchannel_pool", 1),
                                                          ("grpc.max_receive_message_length", 64 << 20)])
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def infer(self, model: str, array: np.ndarray, timeout: float = CALL_TIMEOUT_S, wait_for_ready=None) -> np.ndarray:
        return output_array(self.stub.ModelInfer(infer_request(model, array), timeout=timeout,
                                                 wait_for_ready=wait_for_ready))

    def close(self) -> None:
        self.channel.close()


def frontend_requests(server) -> dict[str, float]:
    return {dict(labels)["frontend"]: value for (name, labels), value in scrape(server.metrics_url).items()
            if name == "ipsbench_frontend_requests_total"}


def channels_by_frontend(server, count: int, wanted_each: int = 2, attempts: int = 64) -> dict[str, list[Channel]]:
    """Open connections until each of ``count`` front ends has ``wanted_each`` of them (bounded)."""
    found: dict[str, list[Channel]] = {}
    spare = []
    for _ in range(attempts):
        channel = Channel(server.grpc_url)
        before = frontend_requests(server)
        channel.infer("affine", np.zeros((1, FEATURES), np.float32))
        after = frontend_requests(server)
        (frontend,) = [k for k, v in after.items() if v != before.get(k, 0.0)]
        bucket = found.setdefault(frontend, [])
        (bucket if len(bucket) < wanted_each else spare).append(channel)
        if len(found) == count and all(len(v) >= wanted_each for v in found.values()):
            break
    for channel in spare:
        channel.close()
    assert len(found) == count and all(len(v) >= wanted_each for v in found.values()), (
        f"{attempts} connections reached front ends {sorted(found)} only"
    )
    return found


def started_pids(server) -> dict[str, int]:
    """The latest pid of each child the supervisor started, by role."""
    return {m["role"]: int(m["pid"]) for m in STARTED.finditer(server.log())}


def ready(channel: Channel) -> bool:
    try:
        return channel.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=5).ready
    except grpc.RpcError:
        return False


@pytest.fixture
def repository(tmp_path, write_test_model) -> Path:
    write_test_model(tmp_path, "affine", features=FEATURES, max_batch_size=8)
    write_test_model(tmp_path, "batch4", features=FEATURES, max_batch_size=8, preferred_batch_sizes=(4,),
                     max_queue_delay_us=30_000_000)
    return tmp_path


@pytest.fixture
def two_frontends(repository, start_server):
    return start_server(repository, "--frontends", "2")


def test_batches_form_across_front_ends_and_statistics_are_one(two_frontends):
    server = two_frontends
    found = channels_by_frontend(server, 2)
    channels = [c for group in found.values() for c in group[:2]]
    results: list = [None] * 4

    def send(i: int) -> None:
        results[i] = channels[i].infer("batch4", np.full((1, FEATURES), i, np.float32))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CALL_TIMEOUT_S)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full((1, FEATURES), 2 * i + 1, np.float32))
    # Whichever front end is asked, one engine answers: the four requests ran as one batch of four.
    answers = []
    for group in found.values():
        stats = group[0].stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="batch4"), timeout=10)
        answers.append(stats)
        (model,) = stats.model_stats
        assert (model.inference_count, model.execution_count) == (4, 1)
    assert answers[0] == answers[1]
    index = [g[0].stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=10) for g in found.values()]
    assert index[0] == index[1] and {m.name for m in index[0].models} == {"affine", "batch4"}
    samples = scrape(server.metrics_url)
    sent = sum(frontend_requests(server).values())
    assert metric(samples, "nv_inference_count", model="batch4", version="1") == 4
    assert metric(samples, "nv_inference_count", model="affine", version="1") + 4 == sent
    assert metric(samples, "ipsbench_frontends_connected") == 2


def test_every_process_reports_its_cpu_and_event_loop(two_frontends):
    server = two_frontends

    def every_loop_ticked():
        samples = scrape(server.metrics_url)
        processes = [("engine", "0"), ("frontend", "0"), ("frontend", "1")]
        ticked = all(metric(samples, "ipsbench_event_loop_lag_seconds_count", role=role, index=index) > 0
                     for role, index in processes)
        return samples if ticked else None

    samples = wait_until(every_loop_ticked, what="a loop monitor tick in the engine and both front ends")
    for index in ("0", "1"):  # the front ends' own processes, not the engine's
        cpu = metric(samples, "ipsbench_process_cpu_seconds_total", role="frontend", index=index)
        assert 0 < metric(samples, "ipsbench_event_loop_cpu_seconds_total", role="frontend", index=index) <= cpu


def test_load_and_unload_apply_to_every_front_end(repository, start_server):
    server = start_server(repository, "--frontends", "2", "--model-control-mode", "explicit",
                          "--load-model", "affine")
    found = channels_by_frontend(server, 2, wanted_each=1)
    first, second = (group[0] for group in found.values())
    first.stub.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(model_name="affine"), timeout=30)
    with pytest.raises(grpc.RpcError) as refused:
        second.infer("affine", np.ones((1, FEATURES), np.float32))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    second.stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="batch4"), timeout=30)
    assert first.stub.ModelReady(service_pb2.ModelReadyRequest(name="batch4"), timeout=10).ready


def test_streams_and_requests_too_large_for_a_slot_are_served(repository, write_test_model, start_server):
    features = 2_200_000  # 8.8 MB per sample: more than an 8 MiB slot, so it travels in the link's message
    write_test_model(repository, "wide", features=features, max_batch_size=2)
    server = start_server(repository, "--frontends", "2")
    channel = Channel(server.grpc_url)
    wide = np.arange(features, dtype=np.float32).reshape(1, features)
    np.testing.assert_array_equal(channel.infer("wide", wide), 2 * wide + 1)
    requests = [infer_request("affine", np.full((1, FEATURES), i, np.float32), id=str(i)) for i in range(20)]
    answers = list(channel.stub.ModelStreamInfer(iter(requests), timeout=CALL_TIMEOUT_S))
    assert sorted(int(a.infer_response.id) for a in answers) == list(range(20))
    for answer in answers:
        i = int(answer.infer_response.id)
        np.testing.assert_array_equal(output_array(answer.infer_response), np.full((1, FEATURES), 2 * i + 1))


class Load:
    """Closed-loop clients, one connection each, counting every request's outcome until stopped. A request waits
    for its connection to be up (``wait_for_ready``), so a request fails only if the server fails it or its
    connection breaks under it, not because the client's reconnection backoff is running."""

    def __init__(self, url: str, clients: int) -> None:
        self.channels = [Channel(url) for _ in range(clients)]
        self.outcomes: Counter = Counter()
        self.messages: Counter = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(c,), daemon=True) for c in self.channels]

    def _loop(self, channel: Channel) -> None:
        x = np.ones((1, FEATURES), np.float32)
        for _ in range(1_000_000):  # bounded; stopped long before
            if self._stop.is_set():
                return
            try:
                np.testing.assert_array_equal(channel.infer("affine", x, timeout=60, wait_for_ready=True), 2 * x + 1)
                outcome = "OK"
            except grpc.RpcError as exc:
                outcome = exc.code().name
                with self._lock:
                    self.messages[exc.details()] += 1
            with self._lock:
                self.outcomes[outcome] += 1

    def ok(self) -> int:
        with self._lock:
            return self.outcomes["OK"]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)
        for channel in self.channels:
            channel.close()


def test_a_killed_front_end_fails_only_its_requests_and_comes_back(two_frontends):
    server = two_frontends
    clients = 6
    before = started_pids(server)["front end 0"]
    with Load(server.grpc_url, clients) as load:
        wait_until(lambda: load.ok() >= 50, what="requests served before the kill")
        os.kill(before, signal.SIGKILL)
        wait_until(lambda: started_pids(server)["front end 0"] != before, what="front end 0 restarted")
        probe = Channel(server.grpc_url)
        wait_until(lambda: ready(probe), what="the server ready again")
        probe.close()
        after_restart = load.ok()
        wait_until(lambda: load.ok() >= after_restart + 100, what="requests served after the restart")
    failed = {code: n for code, n in load.outcomes.items() if code != "OK"}
    # Only requests on the killed front end's connections fail, each once at most (a client's next request
    # reconnects), and they fail UNAVAILABLE: nothing hangs, nothing is lost.
    assert set(failed) <= {"UNAVAILABLE"}, load.messages
    assert sum(failed.values()) <= clients
    assert server.process.poll() is None


def test_a_killed_engine_fails_its_requests_restarts_and_serves_again(two_frontends):
    server = two_frontends
    engine = started_pids(server)["engine"]
    with Load(server.grpc_url, 4) as load:
        wait_until(lambda: load.ok() >= 50, what="requests served before the kill")
        os.kill(engine, signal.SIGKILL)
        wait_until(lambda: started_pids(server)["engine"] != engine, what="the engine restarted")
        server.wait_for_log("ipsbench.server.control: model 'affine' version 1 is ready")
        probe = Channel(server.grpc_url)
        wait_until(lambda: ready(probe), what="the server ready again")
        probe.close()
        after_restart = load.ok()
        wait_until(lambda: load.ok() >= after_restart + 50, what="requests served by the new engine")
    failed = {code: n for code, n in load.outcomes.items() if code != "OK"}
    # In flight on the engine: INTERNAL "worker stopped unexpectedly" (RELIABILITY F15); sent while it restarts:
    # UNAVAILABLE. Every request has its outcome.
    assert set(failed) <= {"INTERNAL", "UNAVAILABLE"}, load.messages
    internal = [m for m in load.messages if "worker stopped unexpectedly" in m]
    assert load.outcomes["INTERNAL"] == sum(load.messages[m] for m in internal) <= 4
    assert "stopped unexpectedly (exit code -9): restarting it" in server.log()


def test_sigterm_drains_every_process_and_leaves_no_shared_memory(repository, write_test_model, start_server):
    write_test_model(repository, "slow", kind="slow", delay_ms=1500, max_batch_size=1, dynamic_batching=False)
    server = start_server(repository, "--frontends", "2")
    pids = started_pids(server)
    rings = sorted(Path("/dev/shm").glob("ipsbench-frontend*-*")) if Path("/dev/shm").is_dir() else []
    assert not [r for r in rings if any(f"-{pid}-" in r.name for pid in pids.values())], "ring names left behind"
    channel = Channel(server.grpc_url)
    answer: dict = {}

    def slow() -> None:
        answer["out"] = channel.infer("slow", np.ones((1, FEATURES), np.float32))

    thread = threading.Thread(target=slow)
    thread.start()
    wait_until(lambda: metric(scrape(server.metrics_url), "ipsbench_inflight_requests", model="slow",
                              version="1") == 1, what="the slow request in flight")
    assert server.stop() == 0
    thread.join(CALL_TIMEOUT_S)
    np.testing.assert_array_equal(answer["out"], np.full((1, FEATURES), 1, np.float32))
    channel.close()
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_a_child_failing_at_start_up_stops_the_server(tmp_path, start_server):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.pbtxt").write_text('name: "broken"\nplatform: "onnxruntime_onnx"\n')
    server = start_server(tmp_path, "--frontends", "2", wait_ready=False)
    assert server.process.wait(timeout=120) == 1
    assert "engine exited with code 1 during start-up: stopping" in server.log()
    assert "restarting" not in server.log()


def test_a_second_signal_ends_every_process_at_once(repository, write_test_model, start_server):
    write_test_model(repository, "slow", kind="slow", delay_ms=20_000, max_batch_size=1, dynamic_batching=False)
    server = start_server(repository, "--frontends", "2", "--grace-period-s", "600")
    pids = started_pids(server)
    channel = Channel(server.grpc_url)
    failure: dict = {}

    def slow() -> None:
        try:
            channel.infer("slow", np.ones((1, FEATURES), np.float32), timeout=120)
        except grpc.RpcError as exc:
            failure["code"] = exc.code()

    thread = threading.Thread(target=slow)
    thread.start()
    wait_until(lambda: metric(scrape(server.metrics_url), "ipsbench_inflight_requests", model="slow",
                              version="1") == 1, what="the slow request in flight")
    server.process.send_signal(signal.SIGTERM)
    server.wait_for_log("SIGTERM received: shutting down gracefully")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) != 0
    thread.join(CALL_TIMEOUT_S)
    assert failure["code"] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL)
    channel.close()
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids.values()),
               what="every child process gone")


def test_shared_memory_regions_registered_through_one_front_end_serve_requests_through_another(two_frontends):
    import tritonclient.utils.shared_memory as shm

    server = two_frontends
    found = channels_by_frontend(server, 2, wanted_each=1)
    first, second = (group[0] for group in found.values())
    rows, size = 2, 2 * FEATURES * 4
    region_in = shm.create_shared_memory_region("in", f"/ipsbench-test-{os.getpid()}-fe-in", size)
    region_out = shm.create_shared_memory_region("out", f"/ipsbench-test-{os.getpid()}-fe-out", size)
    try:
        x = np.arange(rows * FEATURES, dtype=np.float32).reshape(rows, FEATURES)
        shm.set_shared_memory_region(region_in, [x])
        for name, region in (("in", region_in), ("out", region_out)):
            first.stub.SystemSharedMemoryRegister(service_pb2.SystemSharedMemoryRegisterRequest(
                name=name, key=f"/ipsbench-test-{os.getpid()}-fe-{name}", byte_size=size), timeout=10)
        status = [c.stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest(), timeout=10)
                  for c in (first, second)]
        assert status[0] == status[1] and set(status[0].regions) == {"in", "out"}
        request = service_pb2.ModelInferRequest(model_name="affine")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[rows, FEATURES])
        tensor.parameters["shared_memory_region"].string_param = "in"
        tensor.parameters["shared_memory_byte_size"].int64_param = size
        output = request.outputs.add(name="output")
        output.parameters["shared_memory_region"].string_param = "out"
        output.parameters["shared_memory_byte_size"].int64_param = size
        response = second.stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
        assert list(response.raw_output_contents) == [b""]  # the output went into its region
        out = shm.get_contents_as_numpy(region_out, np.float32, [rows, FEATURES])
        np.testing.assert_array_equal(out, 2 * x + 1)
        second.stub.SystemSharedMemoryUnregister(service_pb2.SystemSharedMemoryUnregisterRequest(), timeout=10)
        assert not first.stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest(),
                                                       timeout=10).regions
    finally:
        shm.destroy_shared_memory_region(region_in)
        shm.destroy_shared_memory_region(region_out)
