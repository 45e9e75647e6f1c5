"""ModelStreamInfer: one response per request on a bidirectional stream, errors in-band, the stream goes on."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_helpers import CALL_TIMEOUT_S, infer_request, output_array
from tritonclient.grpc import service_pb2, service_pb2_grpc


@pytest.fixture(scope="module")
def server(tmp_path_factory, write_test_model, start_module_server):
    repo = tmp_path_factory.mktemp("stream-models")
    write_test_model(repo, "affine", max_batch_size=8, max_queue_delay_us=20_000)
    return start_module_server(repo)


@pytest.fixture
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def _input(x: np.ndarray, name: str = "input") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def _collect(results: queue.Queue, count: int) -> list:
    return [results.get(timeout=CALL_TIMEOUT_S) for _ in range(count)]


def test_triton_client_stream_gets_one_answer_per_request_and_they_batch(client):
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    inputs = {f"r{i}": np.random.default_rng(i).standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(24)}
    before = client.get_inference_statistics("affine").model_stats[0].execution_count
    try:
        for request_id, x in inputs.items():
            client.async_stream_infer("affine", [_input(x)], request_id=request_id)
        answers = _collect(results, len(inputs))
    finally:
        client.stop_stream()
    seen = set()
    for result, error in answers:
        assert error is None, error
        request_id = result.get_response().id
        np.testing.assert_allclose(result.as_numpy("output"), 2 * inputs[request_id] + 1, rtol=1e-6)
        seen.add(request_id)
    assert seen == set(inputs)
    executions = client.get_inference_statistics("affine").model_stats[0].execution_count - before
    assert executions < len(inputs)  # requests of one stream share batches


def test_an_error_answers_that_request_only_and_the_stream_goes_on(client, server):
    good = np.ones((1, 4), np.float32)
    unary_errors = {}
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for model, x in (("affine", np.ones((1, 5), np.float32)), ("nope", good)):
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(infer_request(model, x), timeout=CALL_TIMEOUT_S)
            unary_errors[model] = err.value.details()

    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("affine", [_input(good)], request_id="first")
        client.async_stream_infer("affine", [_input(np.ones((1, 5), np.float32))], request_id="bad-shape")
        client.async_stream_infer("nope", [_input(good)], request_id="unknown-model")
        first_three = _collect(results, 3)
        client.async_stream_infer("affine", [_input(2 * good)], request_id="after-errors")
        [(last, last_error)] = _collect(results, 1)
    finally:
        client.stop_stream()
    errors = sorted(str(error) for result, error in first_three if error is not None)
    assert len(errors) == 2
    assert any(unary_errors["affine"] in e for e in errors), (errors, unary_errors)
    assert any(unary_errors["nope"] in e for e in errors), (errors, unary_errors)
    assert last_error is None
    np.testing.assert_allclose(last.as_numpy("output"), 5.0)


def test_raw_stream_error_responses_carry_the_request_id(server):
    requests = [
        infer_request("affine", np.zeros((1, 4), np.float32), id="ok-1"),
        infer_request("affine", np.zeros((9, 4), np.float32), id="too-big"),
        service_pb2.ModelInferRequest(model_name="", id="no-name"),
        infer_request("affine", np.zeros((2, 4), np.float32), id="ok-2"),
    ]
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        responses = list(stub.ModelStreamInfer(iter(requests), timeout=CALL_TIMEOUT_S))
    by_id = {r.infer_response.id: r for r in responses}
    assert sorted(by_id) == ["no-name", "ok-1", "ok-2", "too-big"]
    assert "batch-size must be <= 8" in by_id["too-big"].error_message
    assert by_id["no-name"].error_message == "Model name cannot be empty."
    for request_id, batch in (("ok-1", 1), ("ok-2", 2)):
        assert by_id[request_id].error_message == ""
        np.testing.assert_allclose(output_array(by_id[request_id].infer_response), np.ones((batch, 4)))
