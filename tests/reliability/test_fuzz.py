"""Fuzzing with hypothesis, bounded and deterministic (``derandomize=True``; the whole file runs in well under a
minute): ModelInfer request decoding on a real server (structured requests built from random fields, and
mutated serialized bytes), and the server's image decoding (random bytes, mutated JPEG and PNG files).
"""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import CALL_TIMEOUT_S, assert_healthy, infer_request, write_image_model
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ipsbench.server.preprocess import decode as preprocess_decode

FUZZ = settings(
    max_examples=120, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
"""What a malformed but parseable request may get (besides OK)."""
DATATYPES = ["FP32", "FP16", "FP64", "INT8", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "BF16", "", "fp32", "X"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, write_test_model, start_module_server):
    repo = tmp_path_factory.mktemp("fuzz-models")
    write_test_model(repo, "affine")
    write_test_model(repo, "unbatched", max_batch_size=0, dynamic_batching=False)
    write_image_model(repo, "image8")
    return start_module_server(repo, "--grpc-max-message-mb", "4")


@pytest.fixture(scope="module")
def stub(server, channel_to):
    return service_pb2_grpc.GRPCInferenceServiceStub(channel_to(server.grpc_url))


@pytest.fixture(scope="module")
def raw_infer(server, channel_to):
    return channel_to(server.grpc_url).unary_unary(
        "/inference.GRPCInferenceService/ModelInfer", request_serializer=None, response_deserializer=None
    )


def _assert_clean_answer(error: grpc.RpcError, allowed: set) -> None:
    details = error.details() or ""
    assert error.code() in allowed, (error.code(), details)
    assert "Traceback" not in details and 'File "' not in details, details


# -- structured ModelInferRequests -----------------------------------------------------------------------------

names = st.sampled_from(["affine", "unbatched", "image8", "nope", "", "../affine"]) | st.text(max_size=20)
dims = st.lists(st.integers(min_value=-3, max_value=12) | st.sampled_from([2**31, 2**40, -(2**40)]), max_size=5)


@st.composite
def infer_requests(draw) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(
        model_name=draw(names), model_version=draw(st.sampled_from(["", "1", "2", "-1", "x", "99999999999999999999"])),
        id=draw(st.text(max_size=8)),
    )
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["input", "FOO", ""]) | st.text(max_size=8)),
            datatype=draw(st.sampled_from(DATATYPES)), shape=draw(dims),
        )
        if use_raw:
            request.raw_input_contents.append(draw(st.binary(max_size=256)))
        elif draw(st.booleans()):
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=20)))
            if draw(st.booleans()):
                tensor.contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4)))
            if draw(st.booleans()):
                tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=16), max_size=4)))
    if use_raw and draw(st.booleans()):
        request.raw_input_contents.append(draw(st.binary(max_size=64)))  # a count mismatch
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(name=draw(st.sampled_from(["output", "probabilities", ""])))
    if draw(st.booleans()):
        request.parameters["timeout"].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    return request


@FUZZ
@given(request=infer_requests())
def test_fuzz_structured_infer_requests_get_ok_or_a_client_error(stub, request):
    try:
        stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        _assert_clean_answer(error, CLIENT_ERRORS)


DETAILS_BOUND = 1024
"""However long a request's fields, the error text stays short (client text is quoted as a bounded prefix)."""


@st.composite
def amplifying_requests(draw) -> service_pb2.ModelInferRequest:
    """Requests whose repeated or oversized fields would multiply work or an error's length: an output or input
    named many times, names and datatypes thousands of characters long, shapes of thousands of dimensions."""
    request = infer_request("affine", np.ones((draw(st.integers(1, 8)), 4), np.float32))
    long_text = st.integers(200, 5000).map(lambda n: "x" * n)
    if draw(st.booleans()):
        for _ in range(draw(st.integers(2, 500))):
            request.outputs.add(name=draw(st.sampled_from(["output", "nope"]) | long_text))
    if draw(st.booleans()):
        for _ in range(draw(st.integers(1, 50))):
            request.inputs.append(request.inputs[0])
            request.raw_input_contents.append(request.raw_input_contents[0])
    if draw(st.booleans()):
        request.inputs[0].name = draw(long_text)
    if draw(st.booleans()):
        request.inputs[0].datatype = draw(long_text)
    if draw(st.booleans()):
        request.inputs[0].shape.extend([draw(st.integers(0, 3))] * draw(st.integers(1, 3000)))
    return request


@settings(FUZZ, max_examples=60)
@given(request=amplifying_requests())
def test_fuzz_repeated_and_oversized_fields_get_a_short_client_error(stub, request):
    try:
        stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        _assert_clean_answer(error, CLIENT_ERRORS - {grpc.StatusCode.RESOURCE_EXHAUSTED})
        assert len(error.details() or "") < DETAILS_BOUND


VALID = infer_request("affine", np.arange(8, dtype=np.float32).reshape(2, 4), id="fuzz").SerializeToString()


@st.composite
def mutated_requests(draw) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        if action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[position] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[position : position + draw(st.integers(1, 16))]
            if not data:
                break
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@FUZZ
@given(data=mutated_requests() | st.binary(max_size=512))
def test_fuzz_mutated_request_bytes_never_crash_the_server(raw_infer, data):
    try:
        raw_infer(data, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        # A message that does not parse is INTERNAL (gRPC's own answer, RELIABILITY.md B16); one that parses is
        # judged like any request.
        _assert_clean_answer(error, CLIENT_ERRORS | {grpc.StatusCode.INTERNAL})


def test_fuzz_leaves_the_server_healthy(server, stub):
    """Runs after the fuzz cases of this module (file order): the server survived them all."""
    assert server.process.poll() is None
    assert_healthy(server.grpc_url)


# -- image decoding --------------------------------------------------------------------------------------------


def _encoded(kind: str) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(7).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(_encoded(draw(st.sampled_from(["JPEG", "PNG"]))))
    header_heavy = draw(st.booleans())  # most damage in the first 64 bytes: headers, dimensions, markers
    for _ in range(draw(st.integers(1, 6))):
        upper = min(len(data), 64) if header_heavy else len(data)
        position = draw(st.integers(0, upper - 1))
        if draw(st.booleans()):
            data[position] = draw(st.integers(0, 255))
        else:
            data[position : position + 2] = b"\xff\xff"  # dimensions and lengths to their maximum
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.fixture(scope="module")
def decode():
    decode_module = preprocess_decode
    limits = decode_module.DecodeLimits(max_pixels=4_000_000, max_bytes=1024 * 1024)
    expected = (decode_module.ImageDecodeError, decode_module.ImageTooLargeError)
    decoders = ["pillow"] + (["simplejpeg"] if decode_module.simplejpeg is not None else [])

    def run(data: bytes) -> None:
        for decoder in decoders:
            try:
                decoded = decode_module.decode_rgb(data, limits, shorter_side=8, decoder=decoder)
            except expected:
                continue
            assert decoded.image.mode == "RGB"
            assert decoded.original_size[0] * decoded.original_size[1] <= limits.max_pixels

    return run


@settings(FUZZ, max_examples=250)
@given(data=mutated_images() | st.binary(max_size=2048) | st.binary(max_size=64).map(lambda b: b"\xff\xd8\xff" + b)
       | st.binary(max_size=64).map(lambda b: b"\x89PNG\r\n\x1a\n" + b))
def test_fuzz_image_decoding_raises_only_its_own_errors(decode, data):
    decode(data)
