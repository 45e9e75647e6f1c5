"""Synthetic images, ResNet preprocessing and serialized requests, checked without a server."""
import io

import numpy as np
import pytest
from PIL import Image
from tritonclient.grpc import service_pb2

from ipsbench.server.durations import format_duration_s, parse_duration_s
from ipsbench.loadgen.images import IMAGENET_VAL_SIZES, decode_rgb, synthetic_image, synthetic_images
from ipsbench.loadgen.image_sources import SourceImage, synthetic_source
from ipsbench.loadgen.payloads import (
    InputSpec,
    PayloadError,
    build_payloads,
    infer_request,
    input_spec_from_metadata,
    model_recipe,
    request_tensor,
    tensor_from_request,
)
from ipsbench.server.preprocess.image import cropped_pixels
from ipsbench.server.preprocess.recipe import IMAGENET_MEAN, IMAGENET_STD, Recipe

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


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def test_preprocess_resizes_crops_and_normalizes():
    grey = SourceImage(png(np.full((375, 500, 3), 128, dtype=np.uint8)), 500, 375)
    spec = InputSpec(name="input", datatype="FP32", shape=(-1, 3, 64, 64))
    recipe = model_recipe(spec, None)
    assert (recipe.crop, recipe.resize, recipe.mean, recipe.std) == (64, 73, IMAGENET_MEAN, IMAGENET_STD)
    out = request_tensor([cropped_pixels(grey.encoded, recipe)], spec, "fp32", recipe)
    assert out.shape == (1, 3, 64, 64) and out.dtype == np.float32
    expected = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[0, :, 0, 0], expected, rtol=1e-5)


def test_preprocess_matches_torchvision_resnet_transform():
    transforms = pytest.importorskip("torchvision.transforms")
    rgb = decode_rgb(synthetic_image(0, 1).jpeg)
    reference = transforms.Compose([
        transforms.Resize(round(224 * 256 / 224)),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
    ])(Image.fromarray(rgb)).numpy()
    recipe = Recipe.imagenet(224)
    spec = InputSpec(name="input", datatype="FP32", shape=(-1, 3, 224, 224))
    ours = request_tensor([cropped_pixels(synthetic_image(0, 1).jpeg, recipe)], spec, "fp32", recipe)[0]
    # Only the crop is resampled (Pillow's resize box), not the whole image: equal up to bilinear rounding, one
    # pixel level, which is 1 / (255 * std) after normalization.
    one_level = 1 / (255 * min(IMAGENET_STD))
    np.testing.assert_allclose(ours, reference, atol=one_level * 1.001, rtol=0)
    assert np.mean(np.abs(ours - reference) > 1e-5) < 0.05  # and almost every value exactly


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
    recipe = model_recipe(spec, None)
    images = [cropped_pixels(synthetic_image(0, i).jpeg, recipe) for i in range(3)]
    tensor = request_tensor(images, spec, "fp32", recipe)
    wire = infer_request("resnet18", "", spec, tensor, "r0").SerializeToString()
    request = service_pb2.ModelInferRequest.FromString(wire)
    assert request.model_name == "resnet18" and request.inputs[0].name == "input"
    assert request.inputs[0].datatype == "FP32" and list(request.inputs[0].shape) == [3, 3, 16, 16]
    np.testing.assert_array_equal(tensor_from_request(request), tensor)
    one = request_tensor(images[1:2], spec, "fp32", recipe)[0]
    np.testing.assert_array_equal(tensor_from_request(request)[1], one)


def test_build_fp32_payloads_serializes_distinct_requests_once(tmp_path):
    spec = InputSpec(name="input", datatype="FP32", shape=(-1, 3, 32, 32))
    pool = synthetic_source(seed=0, count=6, cache_dir=tmp_path)
    payloads = build_payloads("resnet18", "", spec, "fp32", images_per_request=2, distinct_requests=3, pool=pool)
    assert len(payloads.requests) == 3 and len(set(payloads.requests)) == 3
    assert payloads.request_shape == (2, 3, 32, 32)
    tensors = [tensor_from_request(service_pb2.ModelInferRequest.FromString(r)) for r in payloads.requests]
    assert all(t.shape == (2, 3, 32, 32) for t in tensors)
    described = payloads.to_dict()
    assert described["distinct_requests"] == 3 and described["source_images"] == 6
    with pytest.raises(PayloadError, match="needs an FP32 input"):
        build_payloads("m", "", InputSpec("input", "FP16", (-1, 3, 32, 32)), "fp32", 1, 1, pool)


def test_the_recipe_comes_from_the_models_config_and_must_fit_its_input():
    from tritonclient.grpc import model_config_pb2

    spec = InputSpec(name="input", datatype="FP32", shape=(-1, 3, 32, 32))
    config = model_config_pb2.ModelConfig()
    for key, value in Recipe(32, 40, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic").parameters().items():
        config.parameters[key].string_value = value
    assert model_recipe(spec, config) == Recipe(32, 40, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic")
    assert model_recipe(spec, model_config_pb2.ModelConfig()) == Recipe.imagenet(32)
    with pytest.raises(PayloadError, match="recipe crops to 32x32 but input 'input' is 16x16"):
        model_recipe(InputSpec(name="input", datatype="FP32", shape=(-1, 3, 16, 16)), config)
    with pytest.raises(PayloadError, match="only square crops"):
        model_recipe(InputSpec(name="input", datatype="FP32", shape=(-1, 3, 16, 24)), None)


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
