"""Dynamic batching, queue bounds, instances and metrics, on small ONNX models built for the purpose."""

from __future__ import annotations

import re
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_helpers import CALL_TIMEOUT_S, infer_request, metric, output_array, scrape
from waiting import wait_until

SLOW_MS = 300
LONG_UNITS = 8
"""A request of this value keeps a slow model busy for LONG_UNITS x SLOW_MS (2.4 s), long enough for the other
request sent beside it to have arrived."""


@pytest.fixture(scope="module")
def repository(tmp_path_factory, write_test_model):
    repo = tmp_path_factory.mktemp("batching-models")
    write_test_model(repo, "affine", max_batch_size=8, max_queue_delay_us=20_000)
    write_test_model(repo, "unbatched", max_batch_size=0, dynamic_batching=False)
    write_test_model(repo, "bounded", kind="slow", delay_ms=SLOW_MS, max_batch_size=1, max_queue_size=2)
    write_test_model(repo, "one_instance", kind="slow", delay_ms=SLOW_MS, max_batch_size=1, dynamic_batching=False)
    write_test_model(
        repo, "two_instances", kind="slow", delay_ms=SLOW_MS, max_batch_size=1, dynamic_batching=False, instance_count=2
    )
    warm_one = (
        'model_warmup [ { name: "one" batch_size: 1 '
        'inputs { key: "input" value { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]\n'
    )
    write_test_model(
        repo, "fragile", kind="fragile", max_batch_size=8, max_queue_delay_us=300_000, extra_config=warm_one
    )
    return repo


@pytest.fixture(scope="module")
def server(repository, start_module_server):
    return start_module_server(repository, "--grpc-max-message-mb", "1")


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def _stats(client, model):
    return client.get_inference_statistics(model).model_stats[0]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(stub, client, server):
    before = scrape(server.metrics_url)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1 + i % 2, 4)).astype(np.float32) for i in range(24)]
    futures = [stub.ModelInfer.future(infer_request("affine", x, id=str(i))) for i, x in enumerate(inputs)]
    for i, (x, future) in enumerate(zip(inputs, futures)):
        response = future.result(timeout=CALL_TIMEOUT_S)
        assert response.id == str(i)
        np.testing.assert_allclose(output_array(response), 2 * x + 1, rtol=1e-6)
    stats = _stats(client, "affine")
    assert max(b.batch_size for b in stats.batch_stats) > 1
    assert stats.inference_count == sum(len(x) for x in inputs)
    assert stats.execution_count < len(inputs)
    after = scrape(server.metrics_url)
    labels = dict(model="affine", version="1")
    executions = metric(after, "nv_inference_exec_count", **labels) - metric(
        before, "nv_inference_exec_count", **labels
    )
    assert metric(after, "ipsbench_batch_size_count", **labels) == executions == stats.execution_count
    assert metric(after, "ipsbench_batch_size_sum", **labels) == stats.inference_count
    assert metric(after, "ipsbench_batch_size_bucket", le="1.0", **labels) < executions


def test_success_metrics_rise_by_exactly_the_requests_sent(stub, server):
    labels = dict(model="affine", version="1")
    before = scrape(server.metrics_url)
    for _ in range(5):
        stub.ModelInfer(infer_request("affine", np.ones((2, 4), np.float32)), timeout=CALL_TIMEOUT_S)
    after = scrape(server.metrics_url)

    def delta(name):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("nv_inference_request_success") == 5
    assert delta("nv_inference_count") == 10
    assert delta("nv_inference_exec_count") == 5
    assert delta("nv_inference_request_failure") == 0
    for name in (
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    ):
        assert delta(name) > 0, name
    assert delta("nv_inference_request_duration_us") >= delta("nv_inference_compute_infer_duration_us")
    assert metric(after, "nv_inference_pending_request_count", **labels) == 0


def test_the_server_time_of_each_request_is_split_before_queue_queue_compute_and_after(stub, server):
    labels = dict(model="affine", version="1")
    before = scrape(server.metrics_url)
    for _ in range(5):  # one at a time: each waits its model's 20 ms queue delay alone
        stub.ModelInfer(infer_request("affine", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
    after = scrape(server.metrics_url)

    def delta(name, **more):
        return metric(after, name, **labels, **more) - metric(before, name, **labels, **more)

    assert delta("ipsbench_request_duration_seconds_count") == 5
    pre = delta("ipsbench_pre_queue_duration_seconds_total")
    post = delta("ipsbench_post_compute_duration_seconds_total")
    queue_s, compute_s = delta("nv_inference_queue_duration_us") / 1e6, sum(
        delta(f"nv_inference_compute_{part}_duration_us") for part in ("input", "infer", "output")) / 1e6
    assert pre > 0 and post > 0
    assert queue_s >= 5 * 0.020  # the queue delay is the queue's, not the front end's
    # The parts never add up to more than the whole (gaps between them belong to none).
    whole = delta("ipsbench_request_duration_seconds_sum")
    assert pre + queue_s + compute_s + post <= whole + 1e-5
    assert whole < 5 * 10  # the histogram counts each request's seconds once
    # Every request of 20 ms or more lies above the 20 ms bucket's lower neighbour, and all within 10 s.
    assert delta("ipsbench_request_duration_seconds_bucket", le="0.01") == 0
    assert delta("ipsbench_request_duration_seconds_bucket", le="10.0") == 5
    assert delta("ipsbench_execution_compute_duration_seconds_total") > 0
    assert metric(after, "ipsbench_model_instances", **labels) == 1
    assert metric(after, "ipsbench_model_instances", model="two_instances", version="1") == 2


def test_the_serving_process_reports_its_cpu_and_its_event_loop(stub, server):
    process = dict(role="server", index="0")
    first = scrape(server.metrics_url)
    assert metric(first, "process_cpu_seconds_total") > 0  # prometheus_client's process collector
    # The loop's timer ticks on its own: its lag histogram grows without any request.
    ticks = metric(first, "ipsbench_event_loop_lag_seconds_count", **process)

    def ticked():
        samples = scrape(server.metrics_url)
        return samples if metric(samples, "ipsbench_event_loop_lag_seconds_count", **process) > ticks else None

    later = wait_until(ticked, what="a tick of the loop monitor")
    assert metric(later, "ipsbench_event_loop_lag_seconds_bucket", le="+Inf", **process) == metric(
        later, "ipsbench_event_loop_lag_seconds_count", **process)
    loop_cpu = metric(later, "ipsbench_event_loop_cpu_seconds_total", **process)
    assert 0 < loop_cpu <= metric(later, "ipsbench_process_cpu_seconds_total", **process)


def test_full_queue_rejects_at_once_with_unavailable(stub, server):
    before = scrape(server.metrics_url)
    started = time.monotonic()
    futures = [stub.ModelInfer.future(infer_request("bounded", np.ones((1, 4), np.float32))) for _ in range(8)]
    rejected, ok = [], 0
    for future in futures:
        try:
            future.result(timeout=CALL_TIMEOUT_S)
            ok += 1
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
            assert "Exceeds maximum queue size" in err.details()
            rejected.append(time.monotonic() - started)
    assert 2 <= ok <= 3, (ok, rejected)  # one executing, at most max_queue_size (2) waiting
    assert len(rejected) == 8 - ok
    after = scrape(server.metrics_url)
    labels = dict(model="bounded", version="1", reason="REJECTED")
    assert metric(after, "nv_inference_request_failure", **labels) - metric(
        before, "nv_inference_request_failure", **labels
    ) == len(rejected)
    # The server still serves that model once the queue has drained.
    stub.ModelInfer(infer_request("bounded", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)


@pytest.mark.parametrize("model, executing_at_once", [("one_instance", 1), ("two_instances", 2)])
def test_instance_group_count_runs_requests_concurrently(stub, client, server, model, executing_at_once):
    """Two long requests at once: with one instance the second waits in the queue while the first runs, with two
    both run; seen on the server's own gauges (in the server, queued), not inferred from timings."""
    request = infer_request(model, np.full((1, 4), LONG_UNITS, np.float32))  # runs LONG_UNITS x SLOW_MS
    futures = [stub.ModelInfer.future(request) for _ in range(2)]
    labels = dict(model=model, version="1")

    def executing_and_queued() -> tuple[float, float]:
        samples = scrape(server.metrics_url)
        queued = metric(samples, "nv_inference_pending_request_count", **labels)
        return metric(samples, "ipsbench_inflight_requests", **labels) - queued, queued

    wait_until(lambda: executing_and_queued() == (executing_at_once, 2 - executing_at_once),
               what=f"{executing_at_once} of the 2 requests executing")
    for future in futures:
        future.result(timeout=CALL_TIMEOUT_S)
    assert _stats(client, model).execution_count == 2


def test_model_without_batch_dimension(stub):
    x = np.arange(4, dtype=np.float32)
    response = stub.ModelInfer(infer_request("unbatched", x), timeout=CALL_TIMEOUT_S)
    np.testing.assert_allclose(output_array(response), 2 * x + 1)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(infer_request("unbatched", x[None]), timeout=CALL_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected [4], got [1,4]" in err.value.details()


def test_message_over_the_size_limit_is_refused_by_grpc(stub):
    too_big = np.zeros((1, 300_000), np.float32)  # 1.2 MB against --grpc-max-message-mb 1
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(infer_request("affine", too_big), timeout=CALL_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    response = stub.ModelInfer(infer_request("affine", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
    np.testing.assert_allclose(output_array(response), 3.0)


def test_engine_failure_fails_the_whole_batch_with_internal_and_a_request_id(stub, server):
    before = scrape(server.metrics_url)
    futures = [stub.ModelInfer.future(infer_request("fragile", np.full((1, 4), i, np.float32))) for i in range(2)]
    details = []
    for future in futures:  # the two requests share one batch of 2, which the engine refuses
        with pytest.raises(grpc.RpcError) as err:
            future.result(timeout=CALL_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        details.append(err.value.details())
    assert details[0] == details[1]
    request_id = re.search(r"request id ([0-9a-f]+)", details[0])[1]
    assert "Traceback" not in details[0] and "Reshape" not in details[0]
    assert f"request id {request_id}" in server.log() and "Traceback" in server.log()
    after = scrape(server.metrics_url)
    labels = dict(model="fragile", version="1", reason="BACKEND")
    failed = metric(after, "nv_inference_request_failure", **labels) - metric(
        before, "nv_inference_request_failure", **labels
    )
    assert failed == 2
    # The model and the server keep serving.
    response = stub.ModelInfer(infer_request("fragile", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
    np.testing.assert_allclose(output_array(response), 1.0)


def test_request_whose_client_gave_up_in_the_queue_is_never_executed(stub, client, server):
    labels = dict(model="one_instance", version="1", reason="CANCELED")
    before_failures = metric(scrape(server.metrics_url), "nv_inference_request_failure", **labels)
    before = _stats(client, "one_instance").execution_count
    first = stub.ModelInfer.future(infer_request("one_instance", np.ones((1, 4), np.float32)))
    with pytest.raises(grpc.RpcError) as err:  # waits behind `first`, gives up long before it could run
        stub.ModelInfer(infer_request("one_instance", np.ones((1, 4), np.float32)), timeout=SLOW_MS / 3000)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    first.result(timeout=CALL_TIMEOUT_S)
    stub.ModelInfer(infer_request("one_instance", np.zeros((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
    assert _stats(client, "one_instance").execution_count - before == 2  # `first` and the last one only
    after_failures = metric(scrape(server.metrics_url), "nv_inference_request_failure", **labels)
    assert after_failures - before_failures == 1
