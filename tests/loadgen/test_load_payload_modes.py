"""Payload modes (fp32, uint8, jpeg), image folders and the synthetic image cache: the requests built, and runs
against a real ipsbench-serve."""
import struct

import numpy as np
import pytest
from load_helpers import assert_accounted
from PIL import Image
from tritonclient.grpc import service_pb2

from ipsbench.export.preprocess_front import write_preprocess_front
from ipsbench.loadgen.image_sources import folder_source, synthetic_source
from ipsbench.server.preprocess.recipe import Recipe
from ipsbench.loadgen.images import synthetic_image
from ipsbench.loadgen.payloads import (
    InputSpec,
    PayloadError,
    build_payloads,
    input_spec_from_metadata,
    model_recipe,
)
from ipsbench.server.preprocess.image import cropped_pixels

Tensor = service_pb2.ModelMetadataResponse.TensorMetadata
QUICK = ("--warmup", "300ms", "--duration", "1s", "--drain", "5s")


def imagenet_folder(root, classes=("n01440764", "n01443537"), per_class=3):
    """A folder in ImageNet's validation layout: one sub-folder per synset, JPEG and PNG files."""
    for label, synset in enumerate(classes):
        (root / synset).mkdir(parents=True)
        for number in range(per_class):
            colour = (200 * label, 40 * number, 90)
            image = Image.new("RGB", (120 + 10 * number, 90), colour)
            suffix = "PNG" if number == 0 else "JPEG"
            image.save(root / synset / f"ILSVRC2012_val_{label}{number}.{suffix}", suffix)
    return root


def test_synthetic_images_are_cached_and_read_back_unchanged(tmp_path):
    first = synthetic_source(seed=5, count=3, cache_dir=tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["5-00000.jpg", "5-00001.jpg", "5-00002.jpg"]
    assert [image.encoded for image in first] == [synthetic_image(5, i).jpeg for i in range(3)]
    (tmp_path / "5-00001.jpg").write_bytes(synthetic_image(6, 0).jpeg)  # a cached file is used as it is
    again = synthetic_source(seed=5, count=3, cache_dir=tmp_path)
    assert again[1].encoded == synthetic_image(6, 0).jpeg and again[0].encoded == first[0].encoded


def test_an_imagenet_layout_folder_gives_labels_in_sorted_synset_order(tmp_path):
    read = folder_source(imagenet_folder(tmp_path / "val"), count=6)
    images, classes = read.images, read.classes
    assert not read.skipped and classes == 2 and [image.label for image in images] == [0, 0, 0, 1, 1, 1]
    assert images[0].name.endswith(".PNG") and images[0].rgb().shape == (90, 120, 3)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (50, 40)).save(flat / "a.jpg")
    flat_read = folder_source(flat, count=4)
    assert flat_read.classes == 0 and [image.label for image in flat_read.images] == [None]


def test_uint8_requests_carry_resized_and_cropped_rgb(tmp_path):
    pool = synthetic_source(seed=0, count=2, cache_dir=tmp_path)
    spec = InputSpec("image", "UINT8", (-1, 32, 32, 3))
    payloads = build_payloads("m_uint8", "", spec, "uint8", images_per_request=2, distinct_requests=1, pool=pool)
    request = service_pb2.ModelInferRequest.FromString(payloads.requests[0])
    assert request.inputs[0].datatype == "UINT8" and list(request.inputs[0].shape) == [2, 32, 32, 3]
    pixels = np.frombuffer(request.raw_input_contents[0], dtype=np.uint8).reshape(2, 32, 32, 3)
    np.testing.assert_array_equal(pixels[1], cropped_pixels(pool[1].encoded, model_recipe(spec, None)))


def test_jpeg_requests_carry_length_prefixed_encoded_images(tmp_path):
    pool = synthetic_source(seed=0, count=3, cache_dir=tmp_path)
    spec = input_spec_from_metadata(service_pb2.ModelMetadataResponse(
        name="m_jpeg", inputs=[Tensor(name="image", datatype="BYTES", shape=[-1, 1])]))
    payloads = build_payloads("m_jpeg", "", spec, "jpeg", images_per_request=3, distinct_requests=2, pool=pool)
    request = service_pb2.ModelInferRequest.FromString(payloads.requests[0])
    assert request.inputs[0].datatype == "BYTES" and list(request.inputs[0].shape) == [3, 1]
    raw, elements = request.raw_input_contents[0], []
    while raw:
        (length,) = struct.unpack("<I", raw[:4])
        elements.append(raw[4:4 + length])
        raw = raw[4 + length:]
    assert elements == [image.encoded for image in pool]
    assert payloads.to_dict()["request_shape"] == [3, 1]


@pytest.mark.parametrize(("mode", "spec", "message"), [
    ("jpeg", InputSpec("input", "FP32", (-1, 3, 8, 8)), "needs a BYTES input"),
    ("uint8", InputSpec("input", "FP32", (-1, 3, 8, 8)), "needs a UINT8 input"),
    ("fp32", InputSpec("image", "BYTES", (-1, 1)), "needs an FP32 input"),
])
def test_a_mode_the_input_does_not_take_is_refused(tmp_path, mode, spec, message):
    pool = synthetic_source(seed=0, count=1, cache_dir=tmp_path)
    with pytest.raises(PayloadError, match=message):
        build_payloads("m", "", spec, mode, 1, 1, pool)


def test_a_jpeg_payload_to_a_tensor_model_exits_2_saying_why(server, start_load):
    run = start_load(server.grpc_url, "--payload", "jpeg", *QUICK)
    assert run.finish(timeout=60) == 2
    assert "payload jpeg needs a BYTES input" in run.stderr()


def test_a_sweep_over_an_image_folder(server, start_load, tmp_path):
    folder = imagenet_folder(tmp_path / "val")
    run = start_load(server.grpc_url, "--images", str(folder), "--concurrency", "1", *QUICK)
    assert run.finish(timeout=60) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    payload = report["payload"]
    assert payload["mode"] == "fp32" and payload["source"] == "folder" and payload["labelled"]
    assert payload["source_images"] == 6 and "2 classes" in payload["description"]


@pytest.mark.parametrize("mode", ["jpeg", "uint8"])
def test_payload_modes_against_the_servers_fronts(model_repository, start_server, start_load, tmp_path, mode):
    import shutil

    repository = tmp_path / "models"
    shutil.copytree(model_repository, repository)
    write_preprocess_front(repository, "resnet18", mode, Recipe(crop=64, resize=73))
    server = start_server(repository)
    run = start_load(server.grpc_url, "--payload", mode, "--images-per-request", "2", "--concurrency", "1", *QUICK,
                     model=f"resnet18_{mode}")
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    assert report["payload"]["mode"] == mode and report["steps"][0]["images_ok"] > 0
