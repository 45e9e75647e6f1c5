"""ModelInfer through Triton's client and a raw stub: outputs match ONNX Runtime run in-process."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from server_helpers import CALL_TIMEOUT_S, infer_request, output_array
from tritonclient.grpc import service_pb2

TOLERANCE = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def reference(model_repository):
    session = ort.InferenceSession(
        str(model_repository / "resnet18" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return lambda x: session.run(["output"], {"input": x})[0]


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_triton_client_inference_matches_onnxruntime(client, reference, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("resnet18", [tensor], request_id=f"req-{batch}", client_timeout=CALL_TIMEOUT_S)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("resnet18", "1", f"req-{batch}")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("output", "FP32", [batch, 1000])]
    np.testing.assert_allclose(result.as_numpy("output"), reference(x), **TOLERANCE)


def test_typed_fp32_contents_give_the_same_answer_as_raw(stub, reference, valid_input):
    request = service_pb2.ModelInferRequest(model_name="resnet18", model_version="1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(valid_input.shape))
    tensor.contents.fp32_contents.extend(valid_input.ravel().tolist())
    typed = output_array(stub.ModelInfer(request, timeout=CALL_TIMEOUT_S))
    raw = output_array(stub.ModelInfer(infer_request("resnet18", valid_input), timeout=CALL_TIMEOUT_S))
    np.testing.assert_allclose(typed, reference(valid_input), **TOLERANCE)
    np.testing.assert_allclose(raw, typed, **TOLERANCE)


def test_requested_outputs_are_the_ones_returned(stub, valid_input):
    request = infer_request("resnet18", valid_input, id="with-outputs")
    request.outputs.add(name="output")
    response = stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    assert [o.name for o in response.outputs] == ["output"]
    assert len(response.raw_output_contents) == 1
    assert response.id == "with-outputs"


def test_nan_and_inf_inputs_are_served(stub):
    x = np.full((1, 3, 64, 64), np.nan, dtype=np.float32)
    x[0, 0, 0, :4] = [np.inf, -np.inf, 0.0, 1.0]
    response = stub.ModelInfer(infer_request("resnet18", x), timeout=CALL_TIMEOUT_S)
    assert output_array(response).shape == (1, 1000)
