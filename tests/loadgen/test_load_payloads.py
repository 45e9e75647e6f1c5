"""Synthetic images, ResNet preprocessing and serialized requests, checked without a server."""
import numpy as np
import pytest
from PIL import Image
from tritonclient.grpc import service_pb2

from ipsbench.server.durations import format_duration_s, parse_duration_s
from ipsbench.loadgen.images import IMAGENET_VAL_SIZES, decode_rgb, synthetic_image, synthetic_images
from ipsbench.loadgen.payloads import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputSpec,
    PayloadError,
    build_fp32_payloads,
    fp32_tensor,
    infer_request,
    input_spec_from_metadata,
    preprocess,
    tensor_from_request,
)

Tensor = service_pb2.ModelMetadataResponse.TensorMetadata


def metadata(*inputs):
    return service_pb2.ModelMetadataResponse(name="m", inputs=list(inputs))


def test_synthetic_images_are_deterministic_photo_like_jpegs_of_imagenet_sizes():
    images = synthetic_images(12, seed=3)
    assert [image.jpeg for image in images] == [image.jpeg for image in synthetic_images(12, seed=3)]
    assert synthetic_image(3, 5).jpeg == images[5].jpeg  # independent of how many are made
    assert synthetic_images(1, seed=4)[0].jpeg != images[0].jpeg
    sizes = {(w, h) for w, h, _ in IMAGENET_VAL_SIZES}
    for image in images:
        assert (image.width, image.height) in sizes
        assert max(image.width, image.height) == 500
        assert image.jpeg[:2] == b"\xff\xd8"
        assert decode_rgb(image.jpeg).shape == (image.height, image.width, 3)
        assert 10_000 < len(image.jpeg) < 300_000  # compresses like a photo, not like a flat card


def test_preprocess_resizes_crops_and_normalizes():
    grey = np.full((375, 500, 3), 128, dtype=np.uint8)
    out = preprocess(grey, (64, 64))
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], (128 / 255 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-5)


def test_preprocess_matches_torchvision_resnet_transform():
    transforms = pytest.importorskip("torchvision.transforms")
    rgb = decode_rgb(synthetic_image(0, 1).jpeg)
    reference = transforms.Compose([
        transforms.Resize(round(224 * 256 / 224)),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist()),
    ])(Image.fromarray(rgb)).numpy()
    ours = preprocess(rgb, (224, 224)).transpose(2, 0, 1)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "layout", "crop", "request_shape"),
    [
        ([-1, 3, 64, 48], "NCHW", (64, 48), [2, 3, 64, 48]),
        ([-1, 64, 48, 3], "NHWC", (64, 48), [2, 64, 48, 3]),
        ([3, 32, 32], "NCHW", (32, 32), None),
    ],
)
def test_input_spec_from_metadata(shape, layout, crop, request_shape):
    spec = input_spec_from_metadata(metadata(Tensor(name="input", datatype="FP32", shape=shape)))
    assert spec.layout == layout and spec.crop_hw == crop
    if request_shape is None:
        assert spec.request_shape(1) == [3, 32, 32]
        with pytest.raises(PayloadError, match="no batch dimension"):
            spec.request_shape(2)
    else:
        assert spec.request_shape(2) == request_shape


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([Tensor(name="a", datatype="FP32", shape=[-1, 3, 8, 8])] * 2, "one image input is supported"),
        ([Tensor(name="a", datatype="FP32", shape=[-1, 3, -1, -1])], "variable image size"),
        ([Tensor(name="a", datatype="FP32", shape=[-1, 1000])], "expected"),
        ([Tensor(name="a", datatype="FP32", shape=[-1, 4, 8, 8])], "no 3-channel"),
    ],
)
def test_unsuitable_inputs_are_refused_with_a_reason(inputs, message):
    with pytest.raises(PayloadError, match=message):
        input_spec_from_metadata(metadata(*inputs))


def test_request_bytes_round_trip_to_the_same_tensor():
    spec = InputSpec(name="input", datatype="FP32", shape=(-1, 3, 16, 16))
    images = [preprocess(decode_rgb(synthetic_image(0, i).jpeg), (16, 16)) for i in range(3)]
    tensor = fp32_tensor(images, spec)
    wire = infer_request("resnet18", "", spec, tensor, "r0").SerializeToString()
    request = service_pb2.ModelInferRequest.FromString(wire)
    assert request.model_name == "resnet18" and request.inputs[0].name == "input"
    assert request.inputs[0].datatype == "FP32" and list(request.inputs[0].shape) == [3, 3, 16, 16]
    np.testing.assert_array_equal(tensor_from_request(request), tensor)
    np.testing.assert_array_equal(tensor_from_request(request)[1], images[1].transpose(2, 0, 1))


def test_build_fp32_payloads_serializes_distinct_requests_once():
    spec = InputSpec(name="input", datatype="FP32", shape=(-1, 3, 32, 32))
    payloads = build_fp32_payloads("resnet18", "", spec, images_per_request=2, distinct_requests=3, seed=0)
    assert len(payloads.requests) == 3 and len(set(payloads.requests)) == 3
    assert payloads.request_shape == (2, 3, 32, 32)
    tensors = [tensor_from_request(service_pb2.ModelInferRequest.FromString(r)) for r in payloads.requests]
    assert all(t.shape == (2, 3, 32, 32) for t in tensors)
    described = payloads.to_dict()
    assert described["distinct_requests"] == 3 and described["source_images"] == 6
    with pytest.raises(PayloadError, match="needs an FP32 input"):
        build_fp32_payloads("m", "", InputSpec("input", "FP16", (-1, 3, 32, 32)), 1, 1, 0)


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10), ("500ms", 0.5), ("2m", 120), ("1h", 3600), ("3", 3),
                                               ("1.5s", 1.5), ("250us", 250e-6)])
def test_durations(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "-1s", "1 0s"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration_s(text)


def test_durations_format_back():
    assert [format_duration_s(s) for s in (0.5, 10, 120)] == ["500ms", "10s", "2m"]
