"""Triton's classification extension: ``class_count`` on a requested output returns top-k ``score:index[:label]``."""

from __future__ import annotations

import shutil
import struct

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from server_helpers import CALL_TIMEOUT_S, infer_request, output_array


@pytest.fixture(scope="module")
def repository(tmp_path_factory, model_repository, write_test_model):
    repo = tmp_path_factory.mktemp("classification-models")
    shutil.copytree(model_repository / "resnet18", repo / "resnet18")  # exported with labels.txt
    write_test_model(repo, "affine", features=6)  # no label file
    write_test_model(repo, "unbatched", features=5, max_batch_size=0, dynamic_batching=False)
    return repo


@pytest.fixture(scope="module")
def server(repository, start_module_server):
    return start_module_server(repository)


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def reference(repository):
    session = ort.InferenceSession(str(repository / "resnet18" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["output"], {"input": x})[0]


@pytest.fixture(scope="module")
def labels(repository):
    return (repository / "resnet18" / "labels.txt").read_text().splitlines()


def _infer(client, model, x, class_count):
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    output = grpcclient.InferRequestedOutput("output", class_count=class_count)
    return client.infer(model, [tensor], outputs=[output], client_timeout=CALL_TIMEOUT_S)


@pytest.mark.parametrize("batch", [1, 3])
def test_class_count_returns_top_k_with_scores_indices_and_labels(client, reference, labels, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
    result = _infer(client, "resnet18", x, class_count=5)
    [output] = result.get_response().outputs
    assert (output.datatype, list(output.shape)) == ("BYTES", [batch, 5])
    classes = result.as_numpy("output")
    assert classes.shape == (batch, 5)
    logits = reference(x)
    for row, expected in zip(classes, logits):
        fields = [element.decode().split(":", 2) for element in row]
        indices = [int(index) for _, index, _ in fields]
        assert indices == list(np.argsort(-expected)[:5])
        scores = [float(score) for score, _, _ in fields]
        np.testing.assert_allclose(scores, expected[indices], atol=1e-4)
        assert scores == sorted(scores, reverse=True)
        assert [label for _, _, label in fields] == [labels[i] for i in indices]
        assert all(len(score.split(".")[1]) == 6 for score, _, _ in fields)  # C's %f, as Triton prints it


def test_without_a_label_file_elements_are_score_and_index(client):
    x = np.array([[0.5, -1.0, 3.0, 2.0, 0.0, 1.0]], np.float32)  # affine: 2x + 1
    classes = _infer(client, "affine", x, class_count=3).as_numpy("output")
    assert classes.tolist() == [[b"7.000000:2", b"5.000000:3", b"3.000000:5"]]


def test_class_count_above_the_number_of_classes_returns_them_all(client):
    x = np.array([[1, 2, 3, 4, 5, 6]], np.float32)
    classes = _infer(client, "affine", x, class_count=100).as_numpy("output")
    assert classes.shape == (1, 6)
    assert [int(c.split(b":")[1]) for c in classes[0]] == [5, 4, 3, 2, 1, 0]


def test_model_without_batch_dimension_gets_a_flat_top_k(client):
    tensor = grpcclient.InferInput("input", [5], "FP32")
    tensor.set_data_from_numpy(np.array([3, 1, 4, 1, 5], np.float32))
    output = grpcclient.InferRequestedOutput("output", class_count=2)
    result = client.infer("unbatched", [tensor], outputs=[output], client_timeout=CALL_TIMEOUT_S)
    assert result.as_numpy("output").tolist() == [b"11.000000:4", b"9.000000:2"]


def test_bytes_output_is_length_prefixed_in_raw_output_contents(server):
    request = infer_request("affine", np.array([[0, 0, 9, 0, 0, 0]], np.float32))
    output = request.outputs.add(name="output")
    output.parameters["classification"].int64_param = 1
    with grpc.insecure_channel(server.grpc_url) as channel:
        from tritonclient.grpc import service_pb2_grpc

        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
        element = b"19.000000:2"
        assert response.raw_output_contents[0] == struct.pack("<I", len(element)) + element
        # Without the parameter the same output comes back as FP32 values.
        plain = stub.ModelInfer(infer_request("affine", np.zeros((1, 6), np.float32)), timeout=CALL_TIMEOUT_S)
        assert plain.outputs[0].datatype == "FP32"
        np.testing.assert_allclose(output_array(plain), 1.0)

        bad = infer_request("affine", np.zeros((1, 6), np.float32))
        bad.outputs.add(name="output").parameters["classification"].string_param = "three"
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(bad, timeout=CALL_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "classification parameter must be an integer" in err.value.details()


def test_classification_is_listed_as_an_extension(client):
    assert "classification" in client.get_server_metadata().extensions

