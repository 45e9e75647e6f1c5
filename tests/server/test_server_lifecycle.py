"""Start-up, readiness, load failures and graceful shutdown of a real ipsbench-serve process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_helpers import CALL_TIMEOUT_S, infer_request, metric, output_array, scrape
from waiting import wait_until
from tritonclient.grpc import service_pb2, service_pb2_grpc

ROOT_TIMEOUT_S = 60


def _health(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S).status


def test_sigterm_refuses_new_work_finishes_in_flight_and_exits_zero(tmp_path, write_test_model, start_server):
    write_test_model(tmp_path, "slow", kind="slow", delay_ms=400, max_batch_size=1, dynamic_batching=False)
    srv = start_server(tmp_path)
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        inputs = [np.array([[1.0, -i, 0.5, 0.0]], np.float32) for i in range(3)]  # max 1: about 400 ms each
        in_flight = [stub.ModelInfer.future(infer_request("slow", x)) for x in inputs]
        # All three have arrived once one runs and two wait in the queue.
        wait_until(
            lambda: (
                metric(scrape(srv.metrics_url), "nv_inference_pending_request_count", model="slow", version="1") == 2
            ),
            what="two queued requests",
        )
        srv.process.send_signal(signal.SIGTERM)
        wait_until(lambda: not stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=5).ready, what="not ready")
        assert _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(infer_request("slow", inputs[0]), timeout=CALL_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Server is shutting down" in err.value.details()
        for x, future in zip(inputs, in_flight):
            np.testing.assert_allclose(output_array(future.result(timeout=CALL_TIMEOUT_S)), x)
    assert srv.process.wait(timeout=ROOT_TIMEOUT_S) == 0, srv.log()
    assert "stopped" in srv.log()


WORK_S = 20
"""How long each request of the grace-period test computes: far longer than the 0.3 s grace."""


def test_work_outlasting_the_grace_period_is_aborted_and_exit_is_nonzero(tmp_path, write_test_model, start_server):
    write_test_model(tmp_path, "very_slow", kind="slow", delay_ms=WORK_S * 1000, max_batch_size=1,
                     dynamic_batching=False)
    srv = start_server(tmp_path, "--grace-period-s", "0.3")
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        futures = [stub.ModelInfer.future(infer_request("very_slow", np.ones((1, 4), np.float32))) for _ in range(2)]
        # Both have arrived once one runs and the other waits in the queue.
        wait_until(
            lambda: (
                metric(scrape(srv.metrics_url), "nv_inference_pending_request_count", model="very_slow", version="1")
                == 1
            ),
            what="one running and one queued request",
        )
        started = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        for future in futures:
            with pytest.raises(grpc.RpcError) as err:
                future.result(timeout=CALL_TIMEOUT_S)
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), err.value.details()
    assert srv.process.wait(timeout=ROOT_TIMEOUT_S) == 1
    assert time.monotonic() - started < WORK_S  # before the running request could have finished
    assert "Exit timeout expired" in srv.log()


def _broken_repository(root, write_test_model):
    write_test_model(root, "good")
    broken = write_test_model(root, "broken")
    (broken / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    write_test_model(root, "bad name")
    return root


def test_a_model_that_fails_to_load_stops_the_server(tmp_path, write_test_model):
    repo = _broken_repository(tmp_path, write_test_model)
    result = subprocess.run(
        [sys.executable, "-m", "ipsbench.server", "--model-repository", str(repo), "--grpc-port", "0", "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=ROOT_TIMEOUT_S,
    )
    assert result.returncode != 0
    assert "load failed for model 'broken':" in result.stderr
    assert "load failed for model 'bad name': invalid model name" in result.stderr
    assert "ipsbench-serve: ready" not in result.stdout
    assert "Traceback" not in result.stderr


def test_without_exit_on_error_the_other_models_serve_and_readiness_is_false(tmp_path, write_test_model, start_server):
    repo = _broken_repository(tmp_path, write_test_model)
    srv = start_server(repo, "--no-exit-on-error", wait_ready=False)
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        wait_until(
            lambda: "serving, but not ready: 2 model(s) failed to load" in srv.log(), ROOT_TIMEOUT_S, "start-up"
        )
        assert "ipsbench-serve: ready" not in srv.stdout_lines
        assert client.is_server_live()
        assert not client.is_server_ready()
        assert client.is_model_ready("good")
        assert not client.is_model_ready("broken")
        index = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
        assert index["good"][0] == "READY"
        assert index["broken"][0] == "UNAVAILABLE" and index["broken"][1]
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        response = stub.ModelInfer(infer_request("good", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
        np.testing.assert_allclose(output_array(response), 3.0)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(infer_request("broken", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "has no available versions" in err.value.details()
    assert srv.stop() == 0


def test_live_but_not_ready_until_models_are_warmed(tmp_path, write_test_model, start_server):
    warmup = (
        'model_warmup [ { name: "ones" batch_size: 1 count: 1 '
        'inputs { key: "input" value { data_type: TYPE_FP32 dims: [ 4 ] random_data: true } } } ]\n'
    )
    write_test_model(
        tmp_path,
        "slow_warmup",
        kind="slow",
        delay_ms=1500,
        max_batch_size=1,
        dynamic_batching=False,
        extra_config=warmup,
    )
    srv = start_server(tmp_path, wait_ready=False)
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=CALL_TIMEOUT_S).live
        assert not stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=CALL_TIMEOUT_S).ready
        assert _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(infer_request("slow_warmup", np.zeros((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "models are still loading" in err.value.details()
        srv.wait_for_line("ipsbench-serve: ready")
        assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=CALL_TIMEOUT_S).ready
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
