"""Every bad request gets Triton's status code and text, and the server serves a valid request right after."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from server_helpers import CALL_TIMEOUT_S, infer_request, metric, scrape
from tritonclient.grpc import service_pb2

GOOD = np.zeros((1, 3, 64, 64), dtype=np.float32)


def _with(**changes):
    def build():
        request = infer_request("resnet18", GOOD)
        for key, value in changes.items():
            setattr(request, key, value)
        return request

    return build


def _fp16():
    request = service_pb2.ModelInferRequest(model_name="resnet18")
    request.inputs.add(name="input", datatype="FP16", shape=[1, 3, 64, 64])
    request.raw_input_contents.append(GOOD.astype(np.float16).tobytes())
    return request


def _shape():
    return infer_request("resnet18", np.zeros((1, 3, 64, 65), dtype=np.float32))


def _bytes(delta):
    def build():
        request = infer_request("resnet18", GOOD)
        data = request.raw_input_contents[0]
        request.raw_input_contents[0] = data[:delta] if delta < 0 else data + b"\0" * delta
        return request

    return build


def _no_inputs():
    return service_pb2.ModelInferRequest(model_name="resnet18")


def _unknown_input():
    return infer_request("resnet18", GOOD, input_name="FOO")


def _extra_input():
    request = infer_request("resnet18", GOOD)
    request.inputs.add(name="FOO", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0" * 4)
    return request


def _raw_count():
    request = infer_request("resnet18", GOOD)
    request.raw_input_contents.append(b"")
    return request


def _raw_and_contents():
    request = infer_request("resnet18", GOOD)
    request.inputs[0].contents.fp32_contents.append(1.0)
    return request


def _too_big():
    return infer_request("resnet18", np.zeros((9, 3, 64, 64), dtype=np.float32))


def _unknown_output():
    request = infer_request("resnet18", GOOD)
    request.outputs.add(name="probabilities")
    return request


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
CASES = {
    "B01 dtype": (_fp16, INVALID, "data-type is 'FP16', but model 'resnet18' expects 'FP32'"),
    "B02 shape": (
        _shape,
        INVALID,
        "unexpected shape for input 'input' for model 'resnet18'. Expected [-1,3,64,64], got [1,3,64,65]",
    ),
    "B03 short": (
        _bytes(-4),
        INVALID,
        "input byte size mismatch for input 'input' for model 'resnet18'. Expected 49152, got 49148",
    ),
    "B03 long": (
        _bytes(4),
        INVALID,
        "input byte size mismatch for input 'input' for model 'resnet18'. Expected 49152, got 49156",
    ),
    "B04 missing": (_no_inputs, INVALID, "expected 1 inputs but got 0 inputs for model 'resnet18'"),
    "B05 unknown": (_unknown_input, INVALID, "unexpected inference input 'FOO' for model 'resnet18'"),
    "B05 extra": (_extra_input, INVALID, "unexpected inference input 'FOO' for model 'resnet18'"),
    "B06 counts": (
        _raw_count,
        INVALID,
        "the number of inputs (1) does not match the expected number of raw input contents (2)",
    ),
    "B06 both": (_raw_and_contents, INVALID, "contents field must not be specified when using raw_input_contents"),
    "B07 batch": (_too_big, INVALID, "inference request batch-size must be <= 8 for 'resnet18'"),
    "B08 model": (_with(model_name="nope"), NOT_FOUND, "Request for unknown model: 'nope' is not found"),
    "B09 version": (_with(model_version="7"), NOT_FOUND, "'resnet18' version 7 is not found"),
    "B10 traversal": (_with(model_name="../resnet18"), NOT_FOUND, "is not found"),
    "B11 empty": (_with(model_name=""), INVALID, "Model name cannot be empty."),
    "B11 blank": (_with(model_name=" \t"), INVALID, "Model name cannot be empty."),
    "bad version": (_with(model_version="one"), INVALID, "version should be an integral value > 0"),
    "unknown output": (_unknown_output, INVALID, "unexpected inference output 'probabilities' for model 'resnet18'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_status_and_text_then_server_still_serves(case, stub, assert_still_serves):
    build, code, text = CASES[case]
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(build(), timeout=CALL_TIMEOUT_S)
    assert err.value.code() == code, err.value.details()
    assert text in err.value.details()
    assert_still_serves()


def test_missing_input_message_names_the_missing_input(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(_no_inputs(), timeout=CALL_TIMEOUT_S)
    assert "missing required input(s) ['input']" in err.value.details()


def test_bad_requests_count_as_failures_without_request_labels(stub, server):
    before = scrape(server.metrics_url)
    for build in (_fp16, _shape, _with(model_name="no-such-model")):
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(build(), timeout=CALL_TIMEOUT_S)
    after = scrape(server.metrics_url)
    labels = dict(model="resnet18", version="1", reason="OTHER")
    assert (
        metric(after, "nv_inference_request_failure", **labels)
        - metric(before, "nv_inference_request_failure", **labels)
        == 2
    )
    assert (
        metric(after, "ipsbench_unknown_model_requests_total") - metric(before, "ipsbench_unknown_model_requests_total")
        == 1
    )
    assert not any("no-such-model" in str(labels) for _, labels in after)
