"""Server faults, lifecycle and limits (matrix rows F01–F04, F06–F09, F12, F17–F19) with faults injected for real.

F05, F10, F11, F13, F14 and F20 are covered by tests/server; F15 does not apply to this design; F16 and the GPU
part of F21 need a GPU; F21/F22 are the soak (benchmarks/soak.py). See docs/reliability-matrix.md.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from reliability_helpers import (
    CALL_TIMEOUT_S,
    ROOT,
    answered_and_failed,
    assert_accounted,
    assert_healthy,
    infer_request,
    metric,
    open_fds,
    output_array,
    rpc_error,
    scrape,
    wait_until,
    write_image_model,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

ADMIN_TOKEN = "correct-horse-battery-staple"
BEARER = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


def _pending(srv, model: str) -> float:
    return metric(scrape(srv.metrics_url), "nv_inference_pending_request_count", model=model, version="1")


def _settled_pending(srv, model: str, timeout_s: float = 10.0) -> float:
    """The model's pending-request gauge once it reaches 0 or stops changing for a second (bounded)."""
    deadline = time.monotonic() + timeout_s
    value, since = _pending(srv, model), time.monotonic()
    while value and time.monotonic() < deadline and time.monotonic() - since < 1.0:
        time.sleep(0.1)
        latest = _pending(srv, model)
        if latest != value:
            value, since = latest, time.monotonic()
    return value


def _sentinel(srv, model: str = "slow") -> None:
    """An instant request (zeros) to a one-at-a-time model: it answers once everything queued before it is gone."""
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(infer_request(model, np.zeros((1, 4), np.float32)), timeout=60)


# -- F01: queue full, as the load generator counts it ----------------------------------------------------------


def test_F01_queue_full_rejections_are_counted_rejected_by_the_load_generator(tmp_path, start_server, start_load):
    write_image_model(tmp_path, "bounded", delay_ms=100, max_batch_size=1, max_queue_size=4)
    write_image_model(tmp_path, "affine_image")  # unused; keeps the repository like a real one with two models
    srv = start_server(tmp_path)
    run = start_load("sweep", srv.grpc_url, "bounded", "--concurrency", "32", "--warmup", "0s", "--duration", "2s",
                     "--drain", "5s", "--distinct-requests", "2", "--max-trials", "1")
    assert run.finish(timeout=120) != 0, run.stdout + run.stderr()  # errors above the allowed 0 %: invalid
    report = run.report()
    assert_accounted(report)
    (step,) = report["steps"]
    assert step["ok"] > 0 and step["rejected"] > step["ok"]  # 32 users against 1 running + 4 queued
    rejected_rows = [e for e in step["errors"] if e["outcome"] == "rejected"]
    assert rejected_rows and all(e["code"] == "UNAVAILABLE" for e in rejected_rows)
    assert any("Exceeds maximum queue size" in e["message"] for e in rejected_rows)
    assert sum(e["count"] for e in rejected_rows) == step["rejected"]
    # Rejections come back at once: far sooner than a request that waits its turn.
    assert step["latency_all_us"]["p50"] < step["latency_us"]["p50"]


# -- F02–F04: queue timeouts ----------------------------------------------------------------------------------


HELD_US = 2_000_000
"""How long a lone request waits in a held queue before it is dispatched (its partner never comes)."""


def _held_queue_model(write_test_model, repo: Path, name: str, policy: str) -> None:
    """A model whose lone request waits :data:`HELD_US` in the queue: it prefers batches of 2 and none forms. The
    queue itself holds the request, so a timeout shorter than the hold expires in the queue whatever the load on
    the machine, and a longer one is outlived by the dispatch."""
    write_test_model(
        repo, name, max_batch_size=2, dynamic_batching=False,
        extra_config=f"dynamic_batching {{ max_queue_delay_microseconds: {HELD_US} preferred_batch_size: 2 "
                     f"default_queue_policy {{ {policy} }} }}\n",
    )


def test_F02_queue_timeout_reject(tmp_path, write_test_model, start_server):
    _held_queue_model(write_test_model, tmp_path, "reject", "default_timeout_microseconds: 50000 timeout_action: REJECT")
    write_test_model(tmp_path, "affine")
    srv = start_server(tmp_path)
    before = scrape(srv.metrics_url)
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        errors = [rpc_error(stub.ModelInfer, infer_request("reject", np.ones((1, 4), np.float32)),
                            timeout=CALL_TIMEOUT_S) for _ in range(3)]  # each held past its 50 ms in the queue
    assert all(error.code() == grpc.StatusCode.UNAVAILABLE for error in errors), [e.code() for e in errors]
    assert all("Request timeout expired" in error.details() for error in errors), [e.details() for e in errors]
    after = scrape(srv.metrics_url)
    labels = dict(model="reject", version="1", reason="REJECTED")
    assert metric(after, "nv_inference_request_failure", **labels) - metric(
        before, "nv_inference_request_failure", **labels
    ) == len(errors)
    assert_healthy(srv.grpc_url)


def test_F03_queue_timeout_delay(tmp_path, write_test_model, start_server):
    # Both requests wait in the queue together (it prefers batches of 4, which never form) until the first one's
    # hold runs out, by when its own 50 ms timeout has long passed: the queue, not the test, orders the events.
    write_test_model(
        tmp_path, "delay", max_batch_size=4, dynamic_batching=False,
        extra_config=f"dynamic_batching {{ max_queue_delay_microseconds: {HELD_US} preferred_batch_size: 4 "
                     "default_queue_policy { default_timeout_microseconds: 30000000 timeout_action: DELAY "
                     "allow_timeout_override: true } }\n",
    )
    srv = start_server(tmp_path)
    finished: list[str] = []
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def send(label: str, timeout_us: int = 0) -> grpc.Future:
            request = infer_request("delay", np.ones((1, 4), np.float32))
            if timeout_us:
                request.parameters["timeout"].int64_param = timeout_us
            future = stub.ModelInfer.future(request)
            future.add_done_callback(lambda _: finished.append(label))
            return future

        late = send("expired", timeout_us=50_000)
        wait_until(lambda: _pending(srv, "delay") == 1, what="the first request held in the queue")
        fresh = send("fresh")  # inside its 30 s timeout throughout
        for future in (late, fresh):
            assert output_array(future.result(timeout=CALL_TIMEOUT_S)).shape == (1, 4)  # DELAY: all OK
    # The timed-out request, though queued first, runs after the one still inside its timeout.
    assert finished == ["fresh", "expired"], finished


def test_F04_per_request_timeout_lower_is_honoured_higher_is_clamped(tmp_path, write_test_model, start_server):
    override = "timeout_action: REJECT allow_timeout_override: true"
    _held_queue_model(write_test_model, tmp_path, "long_default", f"default_timeout_microseconds: 10000000 {override}")
    _held_queue_model(write_test_model, tmp_path, "short_default", f"default_timeout_microseconds: 200000 {override}")
    srv = start_server(tmp_path)

    def held(stub, model: str, timeout_us: int | None) -> grpc.RpcError | None:
        request = infer_request(model, np.ones((1, 4), np.float32))
        if timeout_us is not None:
            request.parameters["timeout"].int64_param = timeout_us
        try:
            stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            return error
        return None

    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert held(stub, "long_default", None) is None  # held 2 s of its 10 s default, then run
        lower = held(stub, "long_default", 50_000)  # its own 50 ms, shorter than the default: honoured
        assert lower is not None and lower.code() == grpc.StatusCode.UNAVAILABLE
        assert "Request timeout expired" in lower.details()
        higher = held(stub, "short_default", 10_000_000)  # longer than the 200 ms default: clamped to it
        assert higher is not None and higher.code() == grpc.StatusCode.UNAVAILABLE
        assert "Request timeout expired" in higher.details()


# -- F06, F07: clients that cancel or die ----------------------------------------------------------------------

CANCELS = 1000
CANCEL_WAVE = 50


def test_F06_a_thousand_cancels_leave_no_request_state_behind(tmp_path, write_test_model, start_server):
    # Each wave is held in the queue (it prefers one batch larger than the wave, which never forms), so every
    # cancel reaches the server while its request is queued, whatever the load on the machine.
    write_test_model(
        tmp_path, "held", max_batch_size=CANCEL_WAVE + 1, dynamic_batching=False,
        extra_config=f"dynamic_batching {{ max_queue_delay_microseconds: 60000000 "
                     f"preferred_batch_size: {CANCEL_WAVE + 1} }}\n",
    )
    write_test_model(tmp_path, "affine")
    srv = start_server(tmp_path)
    fds_before = open_fds(srv.process.pid)
    before = scrape(srv.metrics_url)
    labels = dict(model="held", version="1")
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = infer_request("held", np.ones((1, 4), np.float32))
        for _ in range(CANCELS // CANCEL_WAVE):
            wave = [stub.ModelInfer.future(request) for _ in range(CANCEL_WAVE)]
            wait_until(lambda: _pending(srv, "held") == CANCEL_WAVE, what="the wave queued", timeout_s=60)
            for future in wave:
                future.cancel()
            assert all(f.cancelled() for f in wave)
            wait_until(lambda: _pending(srv, "held") == 0 and metric(
                scrape(srv.metrics_url), "ipsbench_inflight_requests", **labels) == 0,
                what="the wave's requests gone from the server", timeout_s=60)
    after = scrape(srv.metrics_url)
    canceled = metric(after, "nv_inference_request_failure", reason="CANCELED", **labels) - metric(
        before, "nv_inference_request_failure", reason="CANCELED", **labels
    )
    assert canceled == CANCELS, canceled  # every one reached the server while queued, and was counted
    assert metric(after, "nv_inference_request_success", **labels) == 0
    assert_healthy(srv.grpc_url)
    assert open_fds(srv.process.pid) <= fds_before + 8
    # The open-request count is back to 0: shutdown has nothing in flight to wait for.
    assert srv.stop() == 0, srv.log()
    assert "in-flight request(s)" not in srv.log()


def test_F06_cancelling_a_request_behind_others_takes_it_out_of_the_queue_at_once(tmp_path, write_test_model,
                                                                                start_server):
    # Three requests held in the queue (the preferred batch of four never forms); the middle one is cancelled.
    write_test_model(
        tmp_path, "held", max_batch_size=4, dynamic_batching=False,
        extra_config="dynamic_batching { max_queue_delay_microseconds: 60000000 preferred_batch_size: 4 }\n",
    )
    srv = start_server(tmp_path)
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        first = stub.ModelInfer.future(infer_request("held", np.ones((1, 4), np.float32)))
        wait_until(lambda: _pending(srv, "held") == 1, what="the first request queued", timeout_s=60)
        middle = stub.ModelInfer.future(infer_request("held", np.full((1, 4), 2, np.float32)))
        wait_until(lambda: _pending(srv, "held") == 2, what="the second request queued", timeout_s=60)
        last = stub.ModelInfer.future(infer_request("held", np.full((1, 4), 3, np.float32)))
        wait_until(lambda: _pending(srv, "held") == 3, what="the third request queued", timeout_s=60)
        middle.cancel()
        # Long before the queue delay (60 s) would run the batch: the request is taken out when its client goes.
        wait_until(lambda: _pending(srv, "held") == 2, what="the cancelled request out of the queue", timeout_s=30)
        for future in (first, last):
            future.cancel()
        wait_until(lambda: _pending(srv, "held") == 0, what="the queue empty", timeout_s=30)


CRASHING_CLIENT = """
import sys, grpc, numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
request = service_pb2.ModelInferRequest(model_name="slow")
request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
futures = [stub.ModelInfer.future(request, timeout=60) for _ in range(16)]
print("sent", flush=True)
for future in futures:
    future.result()
"""


def test_F07_clients_killed_mid_request_do_not_hurt_the_server_or_other_clients(
    tmp_path, write_test_model, start_server
):
    write_test_model(tmp_path, "slow", kind="slow", delay_ms=100, max_batch_size=1, dynamic_batching=False)
    write_test_model(tmp_path, "affine")
    srv = start_server(tmp_path)
    steady_errors: list[str] = []
    steady_ok = 0
    stop = threading.Event()

    def steady_client() -> None:
        nonlocal steady_ok
        with grpc.insecure_channel(srv.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.ModelInfer(infer_request("affine", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
                    steady_ok += 1
                except grpc.RpcError as error:
                    steady_errors.append(f"{error.code()}: {error.details()}")
                time.sleep(0.01)

    steady = threading.Thread(target=steady_client, daemon=True)
    steady.start()
    try:
        for _ in range(4):
            client = subprocess.Popen([sys.executable, "-c", CRASHING_CLIENT, srv.grpc_url], cwd=ROOT,
                                      stdout=subprocess.PIPE, text=True)
            try:
                assert client.stdout.readline().strip() == "sent"
                wait_until(lambda: _pending(srv, "slow") > 0, what="the client's requests queued")
            finally:
                client.send_signal(signal.SIGKILL)
                client.wait(timeout=10)
                client.stdout.close()
    finally:
        stop.set()
        steady.join(timeout=CALL_TIMEOUT_S)
    assert not steady_errors and steady_ok > 0
    stale_pending = _settled_pending(srv, "slow", timeout_s=30)
    _sentinel(srv)
    assert srv.process.poll() is None
    assert_healthy(srv.grpc_url)
    assert stale_pending == 0, f"nv_inference_pending_request_count stayed at {stale_pending} with nothing queued"


# -- F08, F09: concurrency limits and batching ------------------------------------------------------------------


def test_F08_more_rpcs_than_the_limit_get_resource_exhausted(tmp_path, write_test_model, start_server):
    write_test_model(tmp_path, "slow", kind="slow", delay_ms=300, max_batch_size=1, dynamic_batching=False)
    write_test_model(tmp_path, "affine")
    srv = start_server(tmp_path, "--grpc-max-concurrent-rpcs", "4")
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        futures = [stub.ModelInfer.future(infer_request("slow", np.ones((1, 4), np.float32))) for _ in range(16)]
        wait_until(lambda: all(f.done() for f in futures[4:]) or _pending(srv, "slow") > 3, what="rejections")
        peak_pending = _pending(srv, "slow")
        ok, errors = answered_and_failed(futures, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert 1 <= ok <= 4 and len(errors) == 16 - ok, (ok, len(errors))
    assert peak_pending <= 3  # at most the cap, one of them running: the queue does not grow past it
    assert_healthy(srv.grpc_url)


def test_F09_sixty_four_distinct_requests_batched_together_each_get_their_own_answer(
    tmp_path, write_test_model, start_server
):
    write_test_model(tmp_path, "affine", max_batch_size=8, max_queue_delay_us=50_000)
    srv = start_server(tmp_path)
    inputs = [np.full((1, 4), i, np.float32) + np.arange(4, dtype=np.float32) for i in range(64)]
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        futures = [stub.ModelInfer.future(infer_request("affine", x, id=f"r{i}")) for i, x in enumerate(inputs)]
        for i, (x, future) in enumerate(zip(inputs, futures)):
            response = future.result(timeout=CALL_TIMEOUT_S)
            assert response.id == f"r{i}"
            np.testing.assert_allclose(output_array(response), 2 * x + 1)
        stats = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="affine"), timeout=CALL_TIMEOUT_S)
    (model,) = stats.model_stats
    assert model.inference_count == 64 and model.execution_count < 64
    assert max(b.batch_size for b in model.batch_stats) > 1
    samples = scrape(srv.metrics_url)
    assert metric(samples, "ipsbench_batch_size_bucket", model="affine", version="1", le="1.0") < model.execution_count


# -- F12, F17: the admin surface -------------------------------------------------------------------------------


@pytest.fixture
def admin_server(tmp_path, write_test_model, start_server):
    repo = tmp_path / "models"
    write_test_model(repo, "affine")
    write_test_model(repo, "spare")
    token = tmp_path / "admin-token"
    token.write_text(ADMIN_TOKEN + "\n")
    token.chmod(0o600)
    srv = start_server(repo, "--model-control-mode", "explicit", "--load-model", "affine",
                       "--admin-token-file", str(token))
    return srv, repo


def test_F12_a_failed_reload_keeps_the_old_version_serving(admin_server):
    srv, repo = admin_server
    x = np.ones((1, 4), np.float32)
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        np.testing.assert_allclose(output_array(stub.ModelInfer(infer_request("affine", x), timeout=30)), 3)
        (repo / "affine" / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
        error = rpc_error(stub.RepositoryModelLoad, service_pb2.RepositoryModelLoadRequest(model_name="affine"),
                          metadata=BEARER, timeout=CALL_TIMEOUT_S)
        assert error.code() != grpc.StatusCode.OK
        assert "affine" in error.details() and "Traceback" not in error.details()
        np.testing.assert_allclose(output_array(stub.ModelInfer(infer_request("affine", x), timeout=30)), 3)
        assert stub.ModelReady(service_pb2.ModelReadyRequest(name="affine"), timeout=CALL_TIMEOUT_S).ready
    assert_healthy(srv.grpc_url)


@pytest.mark.parametrize("rpc", ["RepositoryModelLoad", "RepositoryModelUnload"])
def test_F17_admin_rpcs_need_the_credential(admin_server, rpc):
    srv, _ = admin_server
    request_type = getattr(service_pb2, f"{rpc}Request")
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = getattr(stub, rpc)
        missing = rpc_error(call, request_type(model_name="spare"), timeout=CALL_TIMEOUT_S)
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED, missing.details()
        for wrong in ("Bearer nope", f"Bearer {ADMIN_TOKEN}x", ADMIN_TOKEN, "Basic " + ADMIN_TOKEN):
            denied = rpc_error(call, request_type(model_name="spare"), metadata=(("authorization", wrong),),
                               timeout=CALL_TIMEOUT_S)
            assert denied.code() == grpc.StatusCode.PERMISSION_DENIED, (wrong, denied.details())
            assert ADMIN_TOKEN not in denied.details()
        ready = stub.ModelReady(service_pb2.ModelReadyRequest(name="spare"), timeout=CALL_TIMEOUT_S).ready
        assert not ready  # nothing was loaded by the refused calls
        # Data-plane RPCs need no credential.
        stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="affine"), timeout=CALL_TIMEOUT_S)
        if rpc == "RepositoryModelLoad":
            call(request_type(model_name="spare"), metadata=BEARER, timeout=CALL_TIMEOUT_S)
            assert stub.ModelReady(service_pb2.ModelReadyRequest(name="spare"), timeout=CALL_TIMEOUT_S).ready
    assert_healthy(srv.grpc_url)


# -- F18: TLS --------------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=ipsbench test CA", cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN={who}", cwd=folder)
        extra = ["-extfile", "server.ext"] if who == "server" else []
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.pem", "-days", "2", *extra, cwd=folder)
    return folder


def _tls_channel(url: str, pki: Path, with_client_cert: bool) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if with_client_cert else None,
        certificate_chain=(pki / "client.pem").read_bytes() if with_client_cert else None,
    )
    return grpc.secure_channel(url, credentials)


def _tls_server(start_server, repo: Path, pki: Path, *extra: str):
    srv = start_server(repo, "--grpc-tls-cert", str(pki / "server.pem"), "--grpc-tls-key", str(pki / "server.key"),
                       *extra, wait_ready=False)
    srv.wait_for_line("ipsbench-serve: ready")
    return srv


def _answers(channel: grpc.Channel) -> bool:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    response = stub.ModelInfer(infer_request("affine", np.ones((1, 4), np.float32)), timeout=10)
    return bool(np.allclose(output_array(response), 3))


def test_F18_tls_server_refuses_plaintext(tmp_path, write_test_model, start_server, pki):
    write_test_model(tmp_path, "affine")
    srv = _tls_server(start_server, tmp_path, pki)
    with grpc.insecure_channel(srv.grpc_url) as plain:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(plain)
        error = rpc_error(stub.ServerLive, service_pb2.ServerLiveRequest(), timeout=5)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    with _tls_channel(srv.grpc_url, pki, with_client_cert=False) as secure:
        assert _answers(secure)


def test_F18_mutual_tls_refuses_a_client_without_a_certificate(
    tmp_path, write_test_model, start_server, pki
):
    write_test_model(tmp_path, "affine")
    srv = _tls_server(start_server, tmp_path, pki, "--grpc-tls-root-certs", str(pki / "ca.pem"),
                      "--grpc-tls-client-auth")
    with _tls_channel(srv.grpc_url, pki, with_client_cert=False) as anonymous:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(anonymous)
        error = rpc_error(stub.ServerLive, service_pb2.ServerLiveRequest(), timeout=5)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    with grpc.insecure_channel(srv.grpc_url) as plain:
        error = rpc_error(service_pb2_grpc.GRPCInferenceServiceStub(plain).ServerLive,
                          service_pb2.ServerLiveRequest(), timeout=5)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    with _tls_channel(srv.grpc_url, pki, with_client_cert=True) as identified:
        assert _answers(identified)


# -- F19: keepalive --------------------------------------------------------------------------------------------

SERVER_MIN_PING_INTERVAL_MS = 5 * 60 * 1000
"""gRPC servers' default ``grpc.http2.min_recv_ping_interval_without_data_ms``; pings more often earn strikes."""


def test_F19_load_generator_keepalive_does_not_earn_too_many_pings(server_for_loads, start_load):
    from ipsbench.loadgen.client import channel_options

    options = dict(channel_options(1 << 20))
    assert options.get("grpc.keepalive_time_ms", SERVER_MIN_PING_INTERVAL_MS) >= SERVER_MIN_PING_INTERVAL_MS
    assert not options.get("grpc.keepalive_permit_without_calls", 0)
    assert options.get("grpc.http2.max_pings_without_data", 2) != 0  # 0 means unlimited pings
    run = start_load("sweep", server_for_loads.grpc_url, "image8", "--concurrency", "2", "--warmup", "0s",
                     "--duration", "3s", "--drain", "5s", "--max-trials", "1")
    assert run.finish(timeout=120) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    assert report["totals"]["ok"] == report["totals"]["issued"] > 0
    for text in (run.stderr(), server_for_loads.log()):
        assert "too_many_pings" not in text and "GOAWAY" not in text


@pytest.fixture(scope="module")
def server_for_loads(tmp_path_factory, start_module_server):
    repo = tmp_path_factory.mktemp("load-models")
    write_image_model(repo, "image8")
    return start_module_server(repo)
