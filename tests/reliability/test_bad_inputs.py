"""Bad inputs (matrix rows B10, B13–B16) against a real ipsbench-serve; every row ends with "server healthy after".

B01–B09, B11, B12 and B17 are covered by tests/server (see docs/reliability-matrix.md for the node ids).
"""

from __future__ import annotations

import io
import random
import socket
import struct
import time
import zlib

import grpc
import numpy as np
import pytest
from reliability_helpers import (
    CALL_TIMEOUT_S,
    assert_healthy,
    bytes_request,
    infer_request,
    output_array,
    rpc_error,
    rss_bytes,
    write_image_model,
)
from tritonclient.grpc import service_pb2

from ipsbench.export.preprocess_front import write_preprocess_front
from ipsbench.server.preprocess.recipe import Recipe

MAX_MESSAGE_MB = 16
JPEG_MODEL = "image8_jpeg"
TRAVERSAL_NAMES = ("../outside", "a/b", "..", "%2e%2e", "%2e%2e%2foutside", "x\x00y", "..\\outside", "m" * 300)
"""Names with traversal or odd characters; ``outside`` is a real model folder next to the repository."""
BOMB_SIDE = 30_000
BOMB_RSS_BOUND = 50 * 1024 * 1024


def _write_jpeg_front(repository) -> None:
    """The encoded-image front of ``image8`` (``image8_jpeg``)."""
    write_preprocess_front(repository, "image8", "jpeg", Recipe(crop=8, resize=8))


@pytest.fixture(scope="module")
def repository(tmp_path_factory, write_test_model):
    base = tmp_path_factory.mktemp("bad-inputs")
    repo = base / "models"
    write_test_model(repo, "affine")
    write_test_model(repo, "model..1")  # dots inside a name are ordinary characters
    write_test_model(base, "outside")  # a loadable model that must never be reachable from a request
    write_image_model(repo, "image8")
    _write_jpeg_front(repo)
    return repo


@pytest.fixture(scope="module")
def server(repository, start_module_server):
    return start_module_server(repository, "--grpc-max-message-mb", str(MAX_MESSAGE_MB))


@pytest.fixture(scope="module")
def stub(server, channel_to):
    from tritonclient.grpc import service_pb2_grpc

    return service_pb2_grpc.GRPCInferenceServiceStub(channel_to(server.grpc_url))


@pytest.fixture
def jpeg_model(repository):
    return JPEG_MODEL


# -- B10, B11-adjacent: names ----------------------------------------------------------------------------------


def _assert_refused_name(error: grpc.RpcError, name: str) -> None:
    """NOT_FOUND (as for any unknown name) or INVALID_ARGUMENT naming traversal; never the name echoed unbounded."""
    code, details = error.code(), error.details() or ""
    assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (name, code, details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert "must not contain path traversal characters" in details, details
    assert "\x00" not in details and len(details) < 400, details
    assert "/tmp" not in details and "outside/" not in details, details


@pytest.mark.parametrize("name", TRAVERSAL_NAMES, ids=repr)
def test_B10_traversal_names_reach_no_model_in_any_rpc(stub, server, name):
    x = np.ones((1, 4), np.float32)
    _assert_refused_name(rpc_error(stub.ModelInfer, infer_request(name, x), timeout=CALL_TIMEOUT_S), name)
    for call, request in (
        (stub.ModelMetadata, service_pb2.ModelMetadataRequest(name=name)),
        (stub.ModelConfig, service_pb2.ModelConfigRequest(name=name)),
        (stub.ModelStatistics, service_pb2.ModelStatisticsRequest(name=name)),
    ):
        _assert_refused_name(rpc_error(call, request, timeout=CALL_TIMEOUT_S), name)
    try:
        ready = stub.ModelReady(service_pb2.ModelReadyRequest(name=name), timeout=CALL_TIMEOUT_S).ready
    except grpc.RpcError as error:
        _assert_refused_name(error, name)
    else:
        assert not ready
    index = {m.name for m in stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=CALL_TIMEOUT_S).models}
    assert index == {"affine", "model..1", "image8"} | ({JPEG_MODEL} if JPEG_MODEL in index else set())
    assert_healthy(server.grpc_url)


def test_B10_dotted_names_are_ordinary_names(stub):
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(output_array(stub.ModelInfer(infer_request("model..1", x), timeout=CALL_TIMEOUT_S)), 3)
    error = rpc_error(stub.ModelInfer, infer_request("..my_model", x), timeout=CALL_TIMEOUT_S)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "Request for unknown model: '..my_model' is not found" in error.details()


def test_B10_traversal_names_in_repository_load(tmp_path, write_test_model, start_server):
    repo = tmp_path / "models"
    write_test_model(repo, "affine")
    write_test_model(tmp_path, "outside")
    token = tmp_path / "admin-token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    srv = start_server(repo, "--model-control-mode", "explicit", "--admin-token-file", str(token))
    with grpc.insecure_channel(srv.grpc_url) as channel:
        from tritonclient.grpc import service_pb2_grpc

        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for name in ("../outside", "..", "a/b", "x\x00y", "..\\outside"):
            error = rpc_error(
                stub.RepositoryModelLoad,
                service_pb2.RepositoryModelLoadRequest(model_name=name),
                metadata=(("authorization", "Bearer s3cret-token"),),
                timeout=CALL_TIMEOUT_S,
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
            assert "must not contain path traversal characters" in error.details()
        index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=CALL_TIMEOUT_S)
        assert "outside" not in {m.name for m in index.models}


# -- B13, B14: encoded images ----------------------------------------------------------------------------------


def _jpeg(side: int = 32, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid side x side 1-bit grayscale PNG of zeros: about 100 KB on disk, side**2 pixels once decoded."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte, then the packed row
    packer = zlib.compressobj(9)
    block = packer.compress(row * 1000)
    idat = b"".join(block for _ in range(side // 1000)) + packer.compress(row * (side % 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "blob", [b"definitely not an image", bytes(random.Random(13).randbytes(2048)), _jpeg()[: len(_jpeg()) // 2]],
    ids=["text", "random-bytes", "half-a-jpeg"],
)
def test_B13_undecodable_image_is_invalid_argument(stub, server, jpeg_model, blob):
    error = rpc_error(stub.ModelInfer, bytes_request(jpeg_model, [blob]), timeout=CALL_TIMEOUT_S)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "cannot decode image for input 'image'" in error.details()
    assert "Traceback" not in error.details()
    response = stub.ModelInfer(bytes_request(jpeg_model, [_jpeg(seed=1)]), timeout=CALL_TIMEOUT_S)
    assert output_array(response).shape == (1, 3)
    assert_healthy(server.grpc_url)


def test_B14_decompression_bomb_is_refused_from_its_header(stub, server, jpeg_model):
    bomb = decompression_bomb_png()
    assert len(bomb) < 200_000
    before = rss_bytes(server.process.pid)
    started = time.monotonic()
    error = rpc_error(stub.ModelInfer, bytes_request(jpeg_model, [bomb]), timeout=CALL_TIMEOUT_S)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "decompression bomb" in error.details()
    assert time.monotonic() - started < 5.0  # refused from the header, not after decoding 900 MP
    assert rss_bytes(server.process.pid) - before < BOMB_RSS_BOUND
    assert_healthy(server.grpc_url)


# -- B15, B16: the wire ----------------------------------------------------------------------------------------


def test_B15_message_over_the_receive_limit_is_resource_exhausted(stub, server):
    oversized = np.zeros((1, 2 * MAX_MESSAGE_MB * 1024 * 1024 // 4), np.float32)  # 32 MiB against 16 MiB
    error = rpc_error(stub.ModelInfer, infer_request("affine", oversized), timeout=CALL_TIMEOUT_S)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "Received message larger than max" in error.details()
    assert f"vs. {MAX_MESSAGE_MB * 1024 * 1024})" in error.details()
    assert_healthy(server.grpc_url)


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _garbage(seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        "random-bytes": rng.randbytes(4096),
        "preface-then-random": HTTP2_PREFACE + rng.randbytes(4096),
        "headers-with-garbage-hpack": HTTP2_PREFACE
        + _frame(0x4, 0, 0, b"")  # SETTINGS
        + _frame(0x1, 0x4, 1, rng.randbytes(200))  # HEADERS, END_HEADERS, undecodable block
        + _frame(0x0, 0x1, 1, rng.randbytes(64)),  # DATA, END_STREAM
        "data-on-stream-zero": HTTP2_PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x0, 0, 0, rng.randbytes(64)),
        "oversized-frame-header": HTTP2_PREFACE + _frame(0x4, 0, 0, b"") + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01",
    }


@pytest.mark.parametrize("case", list(_garbage(0)))
def test_B16_garbage_on_the_wire_closes_the_connection_only(server, case):
    payload = _garbage(16)[case]
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10) as sock:
        sock.sendall(payload)
        sock.settimeout(5)
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline and sock.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError):
            pass
    assert server.process.poll() is None
    assert_healthy(server.grpc_url)


@pytest.mark.parametrize("seed", range(4))
def test_B16_unparseable_request_bytes_are_internal_not_a_crash(server, channel_to, seed):
    raw_infer = channel_to(server.grpc_url).unary_unary(
        "/inference.GRPCInferenceService/ModelInfer", request_serializer=None, response_deserializer=None
    )
    garbage = b"\xff\xff\xff\xff\x0f" + random.Random(seed).randbytes(256)  # an invalid varint tag
    error = rpc_error(raw_infer, garbage, timeout=CALL_TIMEOUT_S)
    assert error.code() == grpc.StatusCode.INTERNAL, (error.code(), error.details())
    assert "Traceback" not in (error.details() or "")
    assert server.process.poll() is None
    assert_healthy(server.grpc_url)
