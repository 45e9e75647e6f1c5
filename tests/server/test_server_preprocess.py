"""Preprocessing fronts served by a real ipsbench-serve: JPEG/PNG and UINT8 images in, the engine's tensor inside.

The repository holds the session's exported resnet18 (64x64) with its ``_jpeg`` and ``_uint8`` fronts, and an
identity model (output = the engine's input) with fronts in FP32 and FP16, so that the server's preprocessing can
be compared pixel for pixel with client-side preprocessing.

Tolerances, and why: the server decodes JPEGs with libjpeg-turbo's DCT-domain downscaling (to the smallest n/8
scale that still covers the resize target), then resamples only the crop box with Pillow's bilinear filter; the
client reference decodes at full size with Pillow and resizes the whole image with the same filter. The DCT
scaling acts as a different low-pass filter, so pixels differ slightly at sharp edges: on these test photos the
mean absolute difference is under 1/255 and the largest one under 20/255 (both measured; the bounds below leave
room). The identity model's output is compared in pixel units (normalized values times std times 255). For
resnet18, the logits are compared by top-1 class (where the reference's margin is clear of the error) and by the
largest absolute difference relative to the logits' spread. PNG is lossless and decoded at full size: it matches the
reference up to bilinear rounding (1/255). The UINT8 front does exactly the client's normalization, so it matches
the FP32 path to float rounding.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image, ImageDraw, ImageFilter
from server_helpers import CALL_TIMEOUT_S, infer_request, metric, output_array, scrape
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from ipsbench.export.preprocess_front import write_preprocess_front
from ipsbench.server.preprocess.recipe import Recipe

CROP = 64
RESIZE = 73
"""resnet18 at 64x64: 64 × 256/224, the ImageNet evaluation ratio."""
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
JPEG_MEAN_PIXEL_ERROR = 2.0
JPEG_MAX_PIXEL_ERROR = 48.0
"""Bounds on |server - client| in 0..255 pixel units for DCT-downscaled JPEGs (measured: < 1 mean, < 20 max)."""
PNG_MAX_PIXEL_ERROR = 1.0


# -- images -------------------------------------------------------------------------------------------------------


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB image: smooth gradients, blurred shapes with edges, mild sensor noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    base = np.concatenate([x + 0 * y, y + 0 * x, (1 - x) * y], axis=2) * 200 + 20
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(4, max(5, width // 3)))
        draw.ellipse([x0, y0, x0 + size, y0 + size * 0.7], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
    pixels = pixels + rng.normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    """JPEG at quality 90 (ImageNet's typical quality), or PNG/GIF at Pillow's defaults."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format=fmt, quality=90)
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()


def client_pixels(data: bytes) -> np.ndarray:
    """Client-side preprocessing up to the crop: full Pillow decode, resize the shorter side, centre crop (HWC)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if image.width <= image.height:
        size = (RESIZE, int(RESIZE * image.height / image.width))
    else:
        size = (int(RESIZE * image.width / image.height), RESIZE)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = int(round((size[0] - CROP) / 2.0)), int(round((size[1] - CROP) / 2.0))
    return np.asarray(image.crop((left, top, left + CROP, top + CROP)))


def normalize(hwc: np.ndarray) -> np.ndarray:
    """(pixels / 255 - mean) / std, NCHW FP32: what the plain entry expects."""
    return np.ascontiguousarray(((hwc.astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2))


def to_pixel_units(nchw: np.ndarray) -> np.ndarray:
    """Normalized NCHW back to 0..255 pixel units (NHWC), to compare in units a person can judge."""
    return (nchw.astype(np.float32).transpose(0, 2, 3, 1) * STD + MEAN) * 255.0


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-bit greyscale PNG of ``width``x``height`` zeros: ~110 KB that decodes to 900 million pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)]
    idat = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose frame header (SOF0) claims ``width``x``height``."""
    data = bytearray(encode(photo(64, 48, 0)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# -- repository and server ----------------------------------------------------------------------------------------


def write_identity_model(repository: Path, name: str, datatype: str) -> None:
    """``name``: output = input, NCHW [3, CROP, CROP] in FP32 or FP16, max_batch_size 8."""
    import onnx
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT if datatype == "FP32" else TensorProto.FLOAT16
    shape = ["batch", 3, CROP, CROP]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        name,
        [helper.make_tensor_value_info("input", elem, shape)],
        [helper.make_tensor_value_info("output", elem, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repository / name / "1").mkdir(parents=True)
    onnx.save(model, repository / name / "1" / "model.onnx")
    (repository / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
        f'input [ {{ name: "input" data_type: TYPE_{datatype} dims: [ 3, {CROP}, {CROP} ] }} ]\n'
        f'output [ {{ name: "output" data_type: TYPE_{datatype} dims: [ 3, {CROP}, {CROP} ] }} ]\n'
        "dynamic_batching { }\n"
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    )


def write_fronts(repository: Path, name: str) -> None:
    for kind in ("jpeg", "uint8"):
        write_preprocess_front(repository, name, kind, Recipe(CROP, RESIZE, tuple(MEAN.tolist()), tuple(STD.tolist())))


@pytest.fixture(scope="module")
def front_repository(model_repository, tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("fronts")
    shutil.copytree(model_repository / "resnet18", repository / "resnet18", copy_function=os.link)
    write_fronts(repository, "resnet18")
    for name, datatype in (("identity", "FP32"), ("identity16", "FP16")):
        write_identity_model(repository, name, datatype)
        write_fronts(repository, name)
    return repository


@pytest.fixture(scope="module")
def front_server(front_repository, start_module_server):
    return start_module_server(front_repository)


@pytest.fixture(scope="module")
def front_stub(front_server):
    with grpc.insecure_channel(front_server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def client(front_server):
    with grpcclient.InferenceServerClient(front_server.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """A landscape and a portrait JPEG of ImageNet's typical size, and a small one (upscaled)."""
    return [encode(photo(500, 375, 1)), encode(photo(375, 500, 2)), encode(photo(60, 45, 3))]


def infer_images(client, model: str, images: list[bytes], output: str = "output") -> np.ndarray:
    """Encoded images sent as Triton's client sends a BYTES tensor of shape [K, 1]."""
    tensor = grpcclient.InferInput("image", [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
    return client.infer(model, [tensor], client_timeout=CALL_TIMEOUT_S).as_numpy(output)


def infer_uint8(client, model: str, pixels: np.ndarray) -> np.ndarray:
    tensor = grpcclient.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))
    return client.infer(model, [tensor], client_timeout=CALL_TIMEOUT_S).as_numpy("output")


def infer_fp32(client, model: str, tensor_nchw: np.ndarray) -> np.ndarray:
    tensor = grpcclient.InferInput("input", list(tensor_nchw.shape), "FP32")
    tensor.set_data_from_numpy(tensor_nchw)
    return client.infer(model, [tensor], client_timeout=CALL_TIMEOUT_S).as_numpy("output")


def assert_invalid(call, *texts: str) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    for text in texts:
        assert text in caught.value.details()
    return caught.value.details()


def bytes_request(model: str, raw: bytes, shape: list[int]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="image", datatype="BYTES", shape=shape)
    request.raw_input_contents.append(raw)
    return request


# -- metadata -----------------------------------------------------------------------------------------------------


def test_metadata_shows_the_client_facing_image_input(client):
    jpeg = client.get_model_metadata("resnet18_jpeg", as_json=True)
    uint8 = client.get_model_metadata("resnet18_uint8", as_json=True)
    assert jpeg["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": ["-1", "1"]}]
    assert uint8["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": ["-1", str(CROP), str(CROP), "3"]}]
    assert jpeg["outputs"] == client.get_model_metadata("resnet18", as_json=True)["outputs"]


# -- JPEG / PNG front ---------------------------------------------------------------------------------------------


def test_jpeg_front_matches_client_side_preprocessing_pixel_for_pixel(client, photos):
    served = to_pixel_units(infer_images(client, "identity_jpeg", photos))
    expected = np.stack([client_pixels(data) for data in photos]).astype(np.float32)
    error = np.abs(served - expected)
    assert served.shape == (3, CROP, CROP, 3)
    assert error.mean() < JPEG_MEAN_PIXEL_ERROR, error.mean(axis=(1, 2, 3))
    assert error.max() < JPEG_MAX_PIXEL_ERROR, error.max(axis=(1, 2, 3))


def test_png_front_is_decoded_losslessly(client):
    png = encode(photo(500, 375, 4), "PNG")
    served = to_pixel_units(infer_images(client, "identity_jpeg", [png]))
    assert np.abs(served - client_pixels(png)[None]).max() <= PNG_MAX_PIXEL_ERROR + 1e-3


def test_jpeg_front_logits_match_client_preprocessed_fp32(client, photos):
    """resnet18: the JPEG front against client-side preprocessing sent as FP32 to the plain entry."""
    served = infer_images(client, "resnet18_jpeg", photos)
    reference = infer_fp32(client, "resnet18", normalize(np.stack([client_pixels(d) for d in photos])))
    spread = reference.max(axis=1) - reference.min(axis=1)
    error = np.abs(served - reference).max(axis=1)
    assert served.shape == reference.shape == (3, 1000)
    assert np.all(error < 0.1 * spread), (error, spread)
    ordered = np.sort(reference, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] > 2 * error
    assert np.array_equal(served.argmax(axis=1)[clear], reference.argmax(axis=1)[clear])


def test_fp16_engine_gets_the_same_tensor_in_half_precision(client, photos):
    full = infer_images(client, "identity_jpeg", photos[:1])
    half = infer_images(client, "identity16_jpeg", photos[:1])
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), full, atol=2e-3, rtol=1e-3)


def test_typed_bytes_contents_are_accepted(front_stub, photos):
    request = service_pb2.ModelInferRequest(model_name="identity_jpeg")
    tensor = request.inputs.add(name="image", datatype="BYTES", shape=[2, 1])
    tensor.contents.bytes_contents.extend(photos[:2])
    typed = output_array(front_stub.ModelInfer(request, timeout=CALL_TIMEOUT_S))
    raw = bytes_request("identity_jpeg", serialize_byte_tensor(np.array(photos[:2], object)).item(), [2, 1])
    np.testing.assert_array_equal(typed, output_array(front_stub.ModelInfer(raw, timeout=CALL_TIMEOUT_S)))


# -- UINT8 front --------------------------------------------------------------------------------------------------


def test_uint8_front_equals_the_fp32_path(client, photos):
    pixels = np.stack([client_pixels(data) for data in photos])
    served = infer_uint8(client, "resnet18_uint8", pixels)
    reference = infer_fp32(client, "resnet18", normalize(pixels))
    np.testing.assert_allclose(served, reference, rtol=1e-4, atol=1e-4)
    assert np.array_equal(served.argmax(axis=1), reference.argmax(axis=1))
    identity = infer_uint8(client, "identity_uint8", pixels)
    np.testing.assert_allclose(identity, normalize(pixels), rtol=1e-5, atol=1e-5)


# -- bad inputs (RELIABILITY B13, B14) and malformed BYTES --------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    ["random bytes", "truncated jpeg", "truncated png", "corrupt jpeg body", "empty", "gif"],
)
def test_B13_undecodable_image_is_invalid_argument_and_server_still_serves(case, client, front_stub, photos):
    jpeg = photos[0]
    png = encode(photo(120, 90, 5), "PNG")
    corrupt = bytearray(jpeg)
    corrupt[len(jpeg) // 3 : len(jpeg) // 3 + 400] = bytes(400)
    gif = encode(photo(32, 32, 6), "GIF")
    data = {
        "random bytes": np.random.default_rng(7).bytes(5000),
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "truncated png": png[: len(png) // 2],
        "corrupt jpeg body": bytes(corrupt),
        "empty": b"",
        "gif": gif,
    }[case]
    details = assert_invalid(
        lambda: front_stub.ModelInfer(
            bytes_request("resnet18_jpeg", serialize_byte_tensor(np.array([jpeg, data], object)).item(), [2, 1]),
            timeout=CALL_TIMEOUT_S,
        ),
        "cannot decode image for input 'image'",
        "(image 1)",
    )
    assert "Traceback" not in details and "0x" not in details
    assert infer_images(client, "resnet18_jpeg", [jpeg]).shape == (1, 1000)


@pytest.mark.parametrize("case", ["png 30000x30000", "jpeg header 30000x30000"])
def test_B14_decompression_bomb_is_refused_from_the_header(case, front_server, front_stub, client, photos):
    bomb = png_bomb() if case.startswith("png") else jpeg_claiming(30000, 30000)
    assert len(bomb) < 200_000
    rss_before_kb = resident_kb(front_server.process.pid)
    assert_invalid(
        lambda: front_stub.ModelInfer(
            bytes_request("resnet18_jpeg", serialize_byte_tensor(np.array([bomb], object)).item(), [1, 1]),
            timeout=CALL_TIMEOUT_S,
        ),
        "decompression bomb",
        "input 'image'",
    )
    assert resident_kb(front_server.process.pid) - rss_before_kb < 50 * 1024
    assert infer_images(client, "resnet18_jpeg", photos[:1]).shape == (1, 1000)
    assert client.is_server_ready()


def resident_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


@pytest.mark.parametrize(
    ("raw", "shape", "text"),
    [
        (b"\x05\x00", [1, 1], "incomplete string length indicator for inference input 'image' for model "
                              "'resnet18_jpeg', expecting 4 bytes but only 2 bytes available"),
        (b"\xff\xff\xff\x7f" + b"abc", [1, 1], "incomplete string for inference input 'image' for model "
                                               "'resnet18_jpeg', expecting string of length 2147483647 but only 3"),
        (b"\x01\x00\x00\x00a", [2, 1], "expected 2 string elements for inference input 'image' for model "
                                       "'resnet18_jpeg', got 1"),
        (b"\x01\x00\x00\x00a" * 3, [2, 1], "unexpected number of string elements 3 for inference input 'image' "
                                           "for model 'resnet18_jpeg', expecting 2"),
        (b"\x01\x00\x00\x00a\x00", [1, 1], "trailing bytes for inference input 'image'"),
        (b"", [4, 1], "expected 4 string elements for inference input 'image' for model 'resnet18_jpeg', got 0"),
    ],
    ids=["short-prefix", "length-past-end", "too-few", "too-many", "trailing", "empty"],
)
def test_malformed_bytes_tensor_is_invalid_argument(front_stub, client, photos, raw, shape, text):
    assert_invalid(lambda: front_stub.ModelInfer(bytes_request("resnet18_jpeg", raw, shape), timeout=CALL_TIMEOUT_S),
                   text)
    assert infer_images(client, "resnet18_jpeg", photos[:1]).shape == (1, 1000)


def test_wrong_shape_and_dtype_for_the_image_input(front_stub):
    assert_invalid(lambda: front_stub.ModelInfer(bytes_request("resnet18_jpeg", b"", [1, 2]), timeout=CALL_TIMEOUT_S),
                   "unexpected shape for input 'image' for model 'resnet18_jpeg'. Expected [-1,1], got [1,2]")
    fp32 = infer_request("resnet18_jpeg", np.zeros((1, 1), np.float32), input_name="image")
    assert_invalid(lambda: front_stub.ModelInfer(fp32, timeout=CALL_TIMEOUT_S),
                   "data-type is 'FP32', but model 'resnet18_jpeg' expects 'BYTES'")


def test_too_many_images_is_refused_before_decoding(client, photos):
    with pytest.raises(InferenceServerException, match="batch-size must be <= 8"):
        infer_images(client, "resnet18_jpeg", [photos[0]] * 9)


# -- metrics ------------------------------------------------------------------------------------------------------


def test_preprocessing_metrics_count_known_traffic(front_server, client, front_stub, photos):
    labels = {"model": "identity_jpeg", "version": "1"}
    before = scrape(front_server.metrics_url)
    for _ in range(3):
        infer_images(client, "identity_jpeg", photos)
    assert_invalid(
        lambda: front_stub.ModelInfer(
            bytes_request("identity_jpeg", serialize_byte_tensor(np.array([b"nope"], object)).item(), [1, 1]),
            timeout=CALL_TIMEOUT_S,
        ),
        "cannot decode image",
    )
    after = scrape(front_server.metrics_url)

    def delta(name: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("ipsbench_preprocess_requests_total") == 3
    assert delta("ipsbench_preprocess_images_total") == 3 * len(photos)
    assert delta("ipsbench_preprocess_failures_total") == 1
    assert delta("ipsbench_preprocess_duration_seconds_total") > 0
    # Decoding happens before the queue, in the server: its time is the server's front end's, not the client's.
    assert delta("ipsbench_pre_queue_duration_seconds_total") >= delta("ipsbench_preprocess_duration_seconds_total")
    assert delta("ipsbench_request_duration_seconds_count") == 3  # the refused image was never answered
    assert ("ipsbench_preprocess_requests_total", frozenset({"model": "resnet18_uint8", "version": "1"}.items())) in after
    assert not any(name.startswith("ipsbench_preprocess") and dict(key).get("model") == "resnet18"
                   for name, key in after)
