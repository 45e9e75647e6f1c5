"""Fronts preprocessing on a CUDA GPU, served by a real ipsbench-serve: tensors against the CPU path's, the engine
taking the device tensor. Skipped where CUDA is not available.

The repository: resnet18 as exported for the GPU (TorchScript, FP16, channels-last) and an identity TorchScript
model (output = its FP32 input) on ``cuda:0``, plain and with CUDA graphs, each with ``_jpeg`` / ``_uint8`` fronts
preprocessing on the GPU (``auto``, which picks the GPU for a PyTorch engine on CUDA, and ``gpu``), and copies whose
fronts preprocess on the CPU (``cpu``): every comparison is between the two paths of one server.

How close, and why: uint8 fronts do the same FP32 arithmetic on either device (equal to float rounding). JPEG fronts
differ by design: the CPU path decodes downscaled in the DCT domain and resamples with Pillow, the GPU path decodes
at full size with nvJPEG and resamples with torch's antialiased filter; the bounds are those the CPU path meets
against a full-size Pillow reference (mean < 2/255, max < 48/255 in pixel units; on torch's CPU device the same
code measured < 0.6 mean and <= 11 max on these photos), and resnet18's top-1 must agree wherever the CPU path's
margin is clear of the logits' difference. The measured figures are in the assertion messages.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from server_helpers import CALL_TIMEOUT_S, metric, scrape
from test_server_preprocess import CROP, MEAN, RESIZE, STD, encode, jpeg_claiming, photo
from tritonclient.utils import InferenceServerException

from ipsbench.export.preprocess_front import write_preprocess_front
from ipsbench.server.batching.batch import merge
from ipsbench.server.dataplane import ModelInputs
from ipsbench.server.engines.torch_engine import quiet_jit_deprecation
from ipsbench.server.loader import load_source
from ipsbench.server.models import LoadedModel
from ipsbench.server.preprocess.recipe import Recipe
from ipsbench.server.preprocess.stage import DecodePool
from ipsbench.server.repository.checksum import write_checksum
from ipsbench.server.repository.scan import scan_repository

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is false)"),
]
RECIPE = Recipe(CROP, RESIZE, tuple(MEAN.tolist()), tuple(STD.tolist()))
MAX_BATCH_SIZE = 8
"""Of every model here (the session's resnet18 export and the identity models)."""
IMAGES_ENV = "IPSBENCH_TEST_IMAGES"
"""A folder of JPEG/PNG photos (e.g. ImageNet validation images) to compare the two paths on as well; up to
MAX_FOLDER_IMAGES are used. Without it the comparison uses generated photo-like images only."""
MAX_FOLDER_IMAGES = 64
GENERATED_PHOTOS = 16
MEAN_PIXEL_ERROR = 2.0
MAX_PIXEL_ERROR = 48.0


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def write_identity_torchscript(
    repository: Path, name: str, parameters: str = "", instance: str = "count: 1 kind: KIND_GPU gpus: [ 0 ]"
) -> None:
    """``name``: output = input, FP32 [3, CROP, CROP], on cuda:0, max_batch_size 8, batches formed within 20 ms."""
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    path = folder / "1" / "model.pt"
    with quiet_jit_deprecation():
        torch.jit.script(Identity().eval()).save(str(path))
    write_checksum(path)
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "pytorch"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
        f'input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3, {CROP}, {CROP} ] }} ]\n'
        f'output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3, {CROP}, {CROP} ] }} ]\n'
        "dynamic_batching { max_queue_delay_microseconds: 20000 }\n"
        f"instance_group [ {{ {instance} }} ]\n" + parameters
    )


def fronts(repository: Path, name: str, device: str) -> None:
    for kind in ("jpeg", "uint8"):
        write_preprocess_front(repository, name, kind, RECIPE, device)


@pytest.fixture(scope="module")
def gpu_front_repository(torchscript_gpu_export, tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("gpu-fronts")
    source = torchscript_gpu_export.repository / "resnet18_gpu"
    shutil.copytree(source, repository / "resnet18_gpu")
    fronts(repository, "resnet18_gpu", "gpu")
    shutil.copytree(source, repository / "resnet18_cpupre")
    config = repository / "resnet18_cpupre" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "resnet18_gpu"', 'name: "resnet18_cpupre"'))
    fronts(repository, "resnet18_cpupre", "cpu")
    write_identity_torchscript(repository, "identity")
    fronts(repository, "identity", "auto")
    write_identity_torchscript(repository, "identity_cpupre")
    fronts(repository, "identity_cpupre", "cpu")
    write_identity_torchscript(
        repository, "identity_graphs", 'parameters { key: "cuda_graphs" value { string_value: "true" } }\n'
    )
    fronts(repository, "identity_graphs", "gpu")
    return repository


@pytest.fixture(scope="module")
def gpu_server(gpu_front_repository, start_module_server):
    return start_module_server(gpu_front_repository)


@pytest.fixture(scope="module")
def client(gpu_server):
    with grpcclient.InferenceServerClient(gpu_server.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Landscape, portrait, small (upscaled), large, greyscale JPEGs and a PNG (index 5), and the photos of
    ``IPSBENCH_TEST_IMAGES`` where it names a folder."""
    grey = io.BytesIO()
    photo(320, 240, 9).convert("L").save(grey, format="JPEG", quality=90)
    images = [encode(photo(500, 375, 1)), encode(photo(375, 500, 2)), encode(photo(60, 45, 3)),
              encode(photo(1600, 1200, 4)), grey.getvalue(), encode(photo(500, 375, 5), "PNG")]
    images += [encode(photo(400 + 13 * i, 300 + 7 * i, 10 + i)) for i in range(GENERATED_PHOTOS - len(images))]
    folder = os.environ.get(IMAGES_ENV)
    if folder:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        images += [p.read_bytes() for p in files[:MAX_FOLDER_IMAGES]]
    return images


def infer_images(client, model: str, images: list[bytes], output: str = "OUTPUT__0") -> np.ndarray:
    """The images in requests of at most MAX_BATCH_SIZE (a whole request's images are decoded together)."""
    outputs = []
    for start in range(0, len(images), MAX_BATCH_SIZE):
        chunk = images[start : start + MAX_BATCH_SIZE]
        tensor = grpcclient.InferInput("image", [len(chunk), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(chunk, dtype=np.object_).reshape(-1, 1))
        outputs.append(client.infer(model, [tensor], client_timeout=CALL_TIMEOUT_S).as_numpy(output))
    return np.concatenate(outputs)


def infer_uint8(client, model: str, pixels: np.ndarray, output: str = "OUTPUT__0") -> np.ndarray:
    tensor = grpcclient.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    return client.infer(model, [tensor], client_timeout=CALL_TIMEOUT_S).as_numpy(output)


def pixel_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.float32) - b.astype(np.float32)) * (STD[None, :, None, None] * 255.0)


def random_pixels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, CROP, CROP, 3), dtype=np.uint8)


# -- where ----------------------------------------------------------------------------------------------------------


def test_config_and_metrics_say_the_fronts_preprocess_on_the_gpu(gpu_server, client):
    samples = scrape(gpu_server.metrics_url)
    for model, configured, effective in (
        ("identity_uint8", "auto", "gpu"), ("identity_jpeg", "auto", "gpu"), ("resnet18_gpu_jpeg", "gpu", "gpu"),
        ("identity_graphs_uint8", "gpu", "gpu"), ("identity_cpupre_jpeg", "cpu", "cpu"),
    ):
        parameters = client.get_model_config(model, as_json=True)["config"]["parameters"]
        assert parameters["ipsbench.preprocess.device"]["string_value"] == configured
        assert parameters["ipsbench.preprocess.device_effective"]["string_value"] == effective
        assert metric(samples, "ipsbench_preprocess_device", model=model, version="1", device=effective) == 1
    assert "preprocessing on cuda:0 (ipsbench.preprocess.device auto); the engine takes the device tensor" in (
        gpu_server.log()
    )


# -- tensors against the CPU path -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["identity_uint8", "identity_graphs_uint8"])
def test_uint8_on_the_gpu_equals_the_cpu_path(client, model):
    pixels = random_pixels(5, 1)
    served = infer_uint8(client, model, pixels)
    expected = infer_uint8(client, "identity_cpupre_uint8", pixels)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)


def test_jpeg_on_the_gpu_is_close_to_the_cpu_path(client, photos):
    served = infer_images(client, "identity_jpeg", photos)
    expected = infer_images(client, "identity_cpupre_jpeg", photos)
    error = pixel_error(served, expected)
    means, maxima = error.mean(axis=(1, 2, 3)).round(3).tolist(), error.max(axis=(1, 2, 3)).round(1).tolist()
    per_image = f"per image: mean {means}, max {maxima}"
    assert error.mean() < MEAN_PIXEL_ERROR, per_image
    # The largest difference is bounded on the generated photos; a folder's photos (any texture) are held to the mean.
    assert error[:GENERATED_PHOTOS].max() < MAX_PIXEL_ERROR, per_image
    assert error[5].max() < 1e-3, per_image  # the PNG goes through the CPU decoder: the same pixels


def test_resnet18_top1_agrees_between_gpu_and_cpu_preprocessing(client, photos):
    served = infer_images(client, "resnet18_gpu_jpeg", photos)
    reference = infer_images(client, "resnet18_cpupre_jpeg", photos)
    spread = reference.max(axis=1) - reference.min(axis=1)
    error = np.abs(served - reference).max(axis=1)
    assert np.all(error < 0.1 * spread), (error, spread)
    ordered = np.sort(reference, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] > 2 * error
    agree = served.argmax(axis=1) == reference.argmax(axis=1)
    assert np.all(agree[clear]), f"top-1 agrees on {agree.sum()}/{len(agree)}; clear margins {clear.sum()}"


def test_bad_images_are_refused_with_the_cpu_paths_texts(client, photos):
    good = photos[0]
    for bad in (b"GIF89a not an image", good[: len(good) // 2], jpeg_claiming(9000, 9000)):
        refusals = []
        for model in ("identity_jpeg", "identity_cpupre_jpeg"):
            with pytest.raises(InferenceServerException) as caught:
                infer_images(client, model, [good, bad])
            refusals.append((caught.value.status(), caught.value.message().replace(model, "<model>")))
        assert refusals[0][0] == "StatusCode.INVALID_ARGUMENT", refusals[0]
        assert "(image 1)" in refusals[0][1], refusals[0]
        assert refusals[0] == refusals[1]


def test_concurrent_requests_batch_on_the_gpu_and_each_gets_its_own_rows(client):
    requests = [random_pixels(1 + i % 3, 20 + i) for i in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        served = list(pool.map(lambda p: infer_uint8(client, "identity_uint8", p), requests))
    for pixels, output in zip(requests, served):
        expected = ((pixels.astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(output, expected, atol=1e-5)


# -- the hand-over ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["identity_uint8", "identity_jpeg", "identity_graphs_uint8"])
def test_the_engine_takes_the_preprocessed_tensor_on_its_device(gpu_front_repository, photos, name):
    """In process, with the server's own loader, stage, batcher and PyTorch instance: the stage's tensor is on
    cuda:0, and the engine counts batches whose inputs arrived on its device (no copy through host memory)."""
    sources, _ = scan_repository(gpu_front_repository)
    (loaded,) = load_source(next(source for source in sources if source.name == name))
    engine = loaded.instances[0].engine
    if name.endswith("jpeg"):
        client = np.array(photos[:3], dtype=np.object_).reshape(-1, 1)
    else:
        client = random_pixels(3, 5)
    pool = DecodePool(2)

    async def serve() -> tuple[torch.Tensor, list[np.ndarray]]:
        model = LoadedModel(loaded, pool=pool)
        model.batcher.start()
        try:
            inputs = await model.stage.run(ModelInputs({"image": client}, 3, None))
            if name.endswith("jpeg"):  # nvJPEG decoded them, not the CPU fallback
                assert model.stage.device_preprocessor.decoded_on_device == 3
            before = engine.device_batches
            results = await asyncio.gather(*(model.batcher.run(inputs) for _ in range(3)))
            assert engine.device_batches > before
            return inputs.arrays["INPUT__0"], [result.outputs[0] for result in results]
        finally:
            await model.batcher.stop()

    try:
        tensor, outputs = asyncio.run(serve())
    finally:
        pool.shutdown()
        for instance in loaded.instances:
            instance.close()
    assert isinstance(tensor, torch.Tensor) and tensor.device == torch.device("cuda", 0)
    for output in outputs:
        np.testing.assert_allclose(output, tensor.cpu().numpy(), rtol=0, atol=0)


def test_merge_concatenates_cuda_tensors_on_the_device():
    parts = [torch.full((n, 3), float(n), device="cuda") for n in (1, 2)]
    merged = merge([{"x": p} for p in parts])["x"]
    assert merged.device.type == "cuda" and merged.shape == (3, 3)
