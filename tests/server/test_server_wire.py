"""The zero-copy request decoder and response encoder agree with protobuf's own parser and serializer."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from ipsbench.server import convert
from ipsbench.server.dataplane import InferResponse, OutputTensor
from ipsbench.server.wire import decode_infer_request

names = st.text(max_size=20)
blobs = st.binary(max_size=300)


@st.composite
def requests(draw) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name=draw(names), model_version=draw(names), id=draw(names))
    for key in draw(st.lists(names, max_size=2, unique=True)):
        message.parameters[key].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    for _ in range(draw(st.integers(0, 3))):
        tensor = message.inputs.add(name=draw(names), datatype="FP32", shape=draw(st.lists(st.integers(0, 2**40), max_size=4)))
        if draw(st.booleans()):
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32, allow_nan=False), max_size=3)))
    for _ in range(draw(st.integers(0, 2))):
        message.outputs.add(name=draw(names)).parameters["classification"].int64_param = draw(st.integers(0, 9))
    message.raw_input_contents.extend(draw(st.lists(blobs, max_size=4)))
    return message


@settings(max_examples=300, deadline=None)
@given(requests())
def test_decoded_request_equals_protobufs_parse(message):
    wire = decode_infer_request(message.SerializeToString())
    assert [bytes(r) for r in wire.raw] == list(message.raw_input_contents)
    expected = service_pb2.ModelInferRequest()
    expected.CopyFrom(message)
    del expected.raw_input_contents[:]
    assert wire.message == expected


def test_raw_contents_anywhere_in_the_message_are_views_of_the_buffer():
    first = service_pb2.ModelInferRequest(raw_input_contents=[b"\x01" * 1000])
    rest = service_pb2.ModelInferRequest(model_name="m", id="x")
    rest.inputs.add(name="input", datatype="FP32", shape=[1, 250])
    rest.inputs.add(name="mask", datatype="UINT8", shape=[1, 8])
    last = service_pb2.ModelInferRequest(raw_input_contents=[b"\x02" * 8])
    data = first.SerializeToString() + rest.SerializeToString() + last.SerializeToString()  # fields in any order
    wire = decode_infer_request(data)
    assert all(isinstance(r, memoryview) and r.obj is data for r in wire.raw)
    assert [bytes(r) for r in wire.raw] == [b"\x01" * 1000, b"\x02" * 8]
    assert (wire.message.model_name, wire.message.id, wire.message.inputs[0].name) == ("m", "x", "input")
    request = convert.infer_request_from_grpc(wire.message, wire.raw)
    assert np.frombuffer(request.inputs[0].raw, np.uint8).sum() == 1000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_like_protobuf_or_carry_its_error(data):
    try:
        expected = service_pb2.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        assert decode_infer_request(data).error == f"cannot parse the request: {exc}"
        return
    wire = decode_infer_request(data)
    assert not wire.error
    assert [bytes(r) for r in wire.raw] == list(expected.raw_input_contents)
    assert wire.message.model_name == expected.model_name and len(wire.message.inputs) == len(expected.inputs)


@pytest.mark.parametrize(
    "output",
    [
        OutputTensor("output", "FP32", np.arange(12, dtype=np.float32).reshape(3, 4)),
        OutputTensor("output", "FP16", np.arange(12, dtype=np.float16).reshape(4, 3)[:, 1:]),  # not contiguous
        OutputTensor("output", "INT64", np.zeros((0, 4), np.int64)),
        OutputTensor("classes", "BYTES", np.array([[b"0.5:1:cat", b""]], dtype=object)),
    ],
)
def test_encoded_response_equals_protobufs_serialization(output):
    response = InferResponse("m", "1", "id-7", [output, OutputTensor("big", "UINT8", np.ones(300, np.uint8))])
    encoded = convert.infer_response_to_wire(response)
    assert service_pb2.ModelInferResponse.FromString(encoded) == convert.infer_response_to_grpc(response)
    back = convert.infer_response_from_grpc(service_pb2.ModelInferResponse.FromString(encoded))
    np.testing.assert_array_equal(back.outputs[0].array, output.array)


def test_unparseable_request_is_internal_and_the_server_goes_on(tmp_path, write_test_model, start_server):
    import grpc
    from server_helpers import CALL_TIMEOUT_S, infer_request, output_array
    from tritonclient.grpc import service_pb2_grpc

    write_test_model(tmp_path, "affine")
    srv = start_server(tmp_path)
    with grpc.insecure_channel(srv.grpc_url) as channel:
        raw_infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as err:
            raw_infer(b"\xff\xff\xff\xff\x0f" + bytes(range(200)), timeout=CALL_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "cannot parse the request" in err.value.details()
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(infer_request("affine", np.zeros((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
        np.testing.assert_allclose(output_array(response), 1.0)
