"""Where a front preprocesses (``ipsbench.preprocess.device``): the config, the decision, its reports, and the device
path's own code run on the CPU.

The GPU itself is exercised in ``test_preprocess_device_gpu.py``. Here: the parameter parsed and refused; ``auto``
choosing the CPU for engines on the CPU (without importing torch); ``gpu`` without CUDA falling back to the CPU with
one warning; the effective device in the ModelConfig and in the metrics of a real server; the batcher's merge of
torch tensors; and :class:`~ipsbench.server.preprocess.gpu.DevicePreprocessor` on torch's CPU device (the same code
the GPU runs, with ``decode_jpeg`` and ``interpolate`` on the CPU) against the CPU path, tensors and error texts.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from server_helpers import CALL_TIMEOUT_S, metric, scrape
from test_preprocess_device_gpu import write_identity_torchscript
from test_server_preprocess import CROP, MEAN, RESIZE, STD, encode, jpeg_claiming, photo, write_identity_model
from tritonclient.grpc import model_config_pb2 as mc

from ipsbench.export.preprocess_front import write_preprocess_front
from ipsbench.export.settings import ExportSettings
from ipsbench.server import datatypes
from ipsbench.server.batching.batch import merge, split
from ipsbench.server.dataplane import ModelInputs
from ipsbench.server.loader import load_source
from ipsbench.server.model_spec import ConfigError, ModelSpec
from ipsbench.server.models import LoadedModel
from ipsbench.server.preprocess.decode import ImageProblem
from ipsbench.server.preprocess.gpu import DevicePreprocessor
from ipsbench.server.preprocess.placement import EngineDevice, Placement, place
from ipsbench.server.preprocess.recipe import Recipe, RecipeError, read_parameters
from ipsbench.server.preprocess.stage import DecodePool, PreprocessStage, Preprocessor
from ipsbench.server.repository.scan import scan_repository

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()
RECIPE = Recipe(CROP, RESIZE, tuple(MEAN.tolist()), tuple(STD.tolist()))
FRONT = {
    "ipsbench.preprocess": "jpeg",
    "ipsbench.preprocess.engine_input": "input",
    "ipsbench.preprocess.crop": "64",
    "ipsbench.preprocess.resize": "73",
}
DEVICE_MEAN_PIXEL_ERROR = 2.0
DEVICE_MAX_PIXEL_ERROR = 48.0
"""|device path - CPU path| in 0..255 units for JPEGs: full-size decode + torch's antialiased filter against the DCT
downscale + Pillow (measured on these photos: < 0.6 mean, <= 11 max); the bounds of the CPU path's own test."""


# -- the parameter ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, device", [("", "auto"), ("auto", "auto"), ("cpu", "cpu"), ("GPU", "gpu")])
def test_the_device_parameter_is_read_with_auto_by_default(text, device):
    parameters = dict(FRONT, **({"ipsbench.preprocess.device": text} if text else {}))
    _, front = read_parameters(parameters)
    assert front.device == device


def test_an_unknown_device_is_a_load_error_naming_the_parameter_and_its_values():
    with pytest.raises(RecipeError) as caught:
        read_parameters(dict(FRONT, **{"ipsbench.preprocess.device": "tpu"}))
    assert str(caught.value) == "parameter 'ipsbench.preprocess.device' must be one of auto, cpu, gpu, got 'tpu'"


def test_the_device_needs_a_front():
    with pytest.raises(RecipeError, match=r"parameters \['ipsbench.preprocess.device'\] need 'ipsbench.preprocess'"):
        read_parameters({"ipsbench.preprocess.crop": "64", "ipsbench.preprocess.device": "gpu"})


def test_the_reported_effective_device_is_accepted_when_read_back():
    """ipsbench-load reads the recipe from the ModelConfig the server returns, which carries device_effective."""
    recipe, front = read_parameters(dict(FRONT, **{"ipsbench.preprocess.device_effective": "gpu"}))
    assert recipe.crop == 64 and front.device == "auto"


def test_the_front_writes_its_device_into_the_config_parameters(tmp_path):
    write_identity_model(tmp_path, "identity", "FP32")
    folder = write_preprocess_front(tmp_path, "identity", "uint8", RECIPE, "gpu")
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.parameters["ipsbench.preprocess.device"].string_value == "gpu"
    spec = ModelSpec.from_config(config, "onnxruntime", "onnxruntime_onnx")
    assert spec.preprocess.device == "gpu"
    with pytest.raises(ValueError, match="unknown preprocessing device 'tpu'"):
        write_preprocess_front(tmp_path, "identity", "uint8", RECIPE, "tpu")


def test_export_settings_take_the_device_for_fronts_only():
    assert ExportSettings(model="resnet18").preprocess_device == "auto"
    assert ExportSettings(model="resnet18", front=("jpeg",), preprocess_device="gpu").preprocess_device == "gpu"
    with pytest.raises(ValueError, match="--preprocess-device applies to the fronts --front writes"):
        ExportSettings(model="resnet18", preprocess_device="cpu")


def test_export_cli_offers_the_device_with_its_choices():
    result = subprocess.run(
        [sys.executable, "-m", "ipsbench.export", "resnet18", "--preprocess-device", "tpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "argument --preprocess-device: invalid choice: 'tpu'" in result.stderr
    assert all(value in result.stderr.rsplit("choose from", 1)[1] for value in ("auto", "cpu", "gpu"))


# -- the decision -------------------------------------------------------------------------------------------------


def test_auto_with_engines_on_the_cpu_preprocesses_on_the_cpu_without_importing_torch():
    code = (
        "import sys, json\n"
        "from ipsbench.server.preprocess.placement import EngineDevice, place\n"
        "p = place('auto', [EngineDevice('cpu', False), EngineDevice('cpu', False)], 'model m version 1')\n"
        "print(json.dumps([p.effective, 'torch' in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["cpu", False]


def test_cpu_is_kept_even_for_engines_on_a_cuda_device():
    placement = place("cpu", [EngineDevice("cuda:0", True)], "model m version 1")
    assert (placement.configured, placement.effective, placement.device) == ("cpu", "cpu", None)


@pytest.mark.skipif(CUDA, reason="CUDA is available here: gpu does not fall back")
def test_gpu_without_cuda_falls_back_to_the_cpu_with_one_warning(caplog):
    with caplog.at_level(logging.INFO, logger="ipsbench.server.preprocess.placement"):
        placement = place("gpu", [EngineDevice("cpu", False)], "model 'm' version 1")
    assert (placement.configured, placement.effective) == ("gpu", "cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("model 'm' version 1: ipsbench.preprocess.device is gpu, but ")
    assert warnings[0].endswith(": preprocessing on the CPU")


@pytest.mark.skipif(CUDA, reason="CUDA is available here: auto picks the GPU for a CUDA engine")
def test_auto_without_cuda_preprocesses_on_the_cpu_without_a_warning(caplog):
    with caplog.at_level(logging.INFO, logger="ipsbench.server.preprocess.placement"):
        placement = place("auto", [EngineDevice("cuda:0", True)], "model 'm' version 1")
    assert placement.effective == "cpu"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
def test_auto_hands_the_device_tensor_only_to_engines_that_take_it_on_that_device():
    assert place("auto", [EngineDevice("cuda:0", True)], "m").to_host is False
    onnx = place("auto", [EngineDevice("cuda:0", False)], "m")
    assert (onnx.effective, onnx.device, onnx.to_host) == ("gpu", "cuda:0", True)
    assert place("auto", [EngineDevice("cpu", False)], "m").effective == "cpu"
    assert place("gpu", [EngineDevice("cpu", False)], "m").device == "cuda:0"


# -- the batcher's merge ------------------------------------------------------------------------------------------


def test_merge_concatenates_torch_tensors_with_torch_and_split_slices_them():
    first, second = torch.arange(6.0).reshape(2, 3), torch.arange(6.0, 9.0).reshape(1, 3)
    merged = merge([{"x": first}, {"x": second}])
    assert isinstance(merged["x"], torch.Tensor)
    assert torch.equal(merged["x"], torch.cat([first, second]))
    parts = split([merged["x"]], [2, 1])
    assert torch.equal(parts[0][0], first) and torch.equal(parts[1][0], second)


def test_merge_of_numpy_arrays_stays_numpy_and_a_single_request_passes_through():
    arrays = [np.ones((1, 3), np.float32), np.zeros((2, 3), np.float32)]
    merged = merge([{"x": a} for a in arrays])["x"]
    assert isinstance(merged, np.ndarray) and merged.shape == (3, 3)
    tensor = torch.ones(2, 3)
    assert merge([{"x": tensor}])["x"] is tensor


# -- the device path's code, on torch's CPU device ----------------------------------------------------------------


def front_spec(
    kind: str, datatype: str = "FP32", interpolation: str = "bilinear", channel_order: str = "rgb"
) -> ModelSpec:
    config = mc.ModelConfig(name=f"m_{kind}", max_batch_size=8)
    if kind == "jpeg":
        config.input.add(name="image", data_type=mc.TYPE_STRING, dims=[1])
    else:
        config.input.add(name="image", data_type=mc.TYPE_UINT8, dims=[CROP, CROP, 3])
    config.output.add(name="output", data_type=mc.TYPE_FP32, dims=[3, CROP, CROP])
    recipe = Recipe(CROP, RESIZE, tuple(MEAN.tolist()), tuple(STD.tolist()), interpolation, channel_order)
    parameters = {**FRONT, **recipe.parameters(), "ipsbench.preprocess": kind,
                  "ipsbench.preprocess.engine_datatype": datatype}
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return ModelSpec.from_config(config, "onnxruntime", "onnxruntime_onnx")


def images_array(images: list[bytes]) -> np.ndarray:
    return datatypes.object_array(images).reshape(-1, 1)


def pixel_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of normalized NCHW tensors in 0..255 pixel units."""
    return np.abs(a.astype(np.float32) - b.astype(np.float32)) * (STD[None, :, None, None] * 255.0)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_device_path_jpegs_are_close_to_the_cpu_path_and_png_is_exact(interpolation):
    front = front_spec("jpeg", interpolation=interpolation).preprocess
    jpegs = [encode(photo(500, 375, 1)), encode(photo(375, 500, 2)), encode(photo(60, 45, 3))]
    png = encode(photo(500, 375, 4), "PNG")
    client = images_array([*jpegs, png])
    expected = Preprocessor(front).run(client)
    preprocessor = DevicePreprocessor(front, "cpu")
    served = preprocessor.run(client)
    assert preprocessor.decoded_on_device == 3  # the JPEGs by decode_jpeg, the PNG by the CPU decoder
    assert isinstance(served, torch.Tensor) and served.shape == (4, 3, CROP, CROP) and served.dtype == torch.float32
    error = pixel_error(served.numpy(), expected)
    assert error[:3].mean() < DEVICE_MEAN_PIXEL_ERROR, error.mean(axis=(1, 2, 3))
    assert error[:3].max() < DEVICE_MAX_PIXEL_ERROR, error.max(axis=(1, 2, 3))
    assert error[3].max() < 1e-3  # PNG goes through the CPU decoder: the same pixels


def test_device_path_decodes_greyscale_and_cmyk_jpegs_as_rgb():
    front = front_spec("jpeg").preprocess
    grey = io.BytesIO()
    photo(200, 150, 5).convert("L").save(grey, format="JPEG", quality=90)
    cmyk = io.BytesIO()
    photo(200, 150, 6).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    client = images_array([grey.getvalue(), cmyk.getvalue()])
    error = pixel_error(DevicePreprocessor(front, "cpu").run(client).numpy(), Preprocessor(front).run(client))
    assert error.mean() < DEVICE_MEAN_PIXEL_ERROR and error.max() < DEVICE_MAX_PIXEL_ERROR


@pytest.mark.parametrize("datatype", ["FP32", "FP16"])
def test_device_path_uint8_matches_the_cpu_path_and_can_return_host_arrays(datatype):
    front = front_spec("uint8", datatype).preprocess
    pixels = np.random.default_rng(7).integers(0, 256, (3, CROP, CROP, 3), dtype=np.uint8)
    pixels.flags.writeable = False  # as requests arrive: views of the received bytes
    served = DevicePreprocessor(front, "cpu", to_host=True).run(pixels)
    expected = Preprocessor(front).run(pixels)
    assert isinstance(served, np.ndarray) and served.dtype == expected.dtype
    np.testing.assert_allclose(served.astype(np.float32), expected.astype(np.float32), rtol=0, atol=1e-6)


def test_device_path_puts_the_channels_in_the_recipes_order_as_the_cpu_path_does():
    pixels = np.random.default_rng(8).integers(0, 256, (2, CROP, CROP, 3), dtype=np.uint8)
    uint8 = front_spec("uint8", channel_order="bgr").preprocess
    served = DevicePreprocessor(uint8, "cpu", to_host=True).run(pixels)
    np.testing.assert_allclose(served, Preprocessor(uint8).run(pixels), rtol=0, atol=1e-6)
    rgb = DevicePreprocessor(front_spec("uint8").preprocess, "cpu", to_host=True).run(pixels)
    # Channel 0 is the blue plane, normalized with the first mean and std (listed in the engine's order).
    np.testing.assert_allclose(served[:, 0] * STD[0] + MEAN[0], rgb[:, 2] * STD[2] + MEAN[2], rtol=0, atol=1e-5)

    jpeg = front_spec("jpeg", channel_order="bgr").preprocess
    client = images_array([encode(photo(200, 150, 9)), encode(photo(200, 150, 10), "PNG")])
    preprocessor = DevicePreprocessor(jpeg, "cpu")
    error = pixel_error(preprocessor.run(client).numpy(), Preprocessor(jpeg).run(client))
    assert preprocessor.decoded_on_device == 1
    assert error[0].mean() < DEVICE_MEAN_PIXEL_ERROR and error[0].max() < DEVICE_MAX_PIXEL_ERROR
    assert error[1].max() < 1e-3


def problem_text(preprocessor, client: np.ndarray) -> tuple[int, str, str]:
    with pytest.raises(ImageProblem) as caught:
        preprocessor.run(client)
    return caught.value.index, type(caught.value.cause).__name__, str(caught.value.cause)


def test_device_path_refuses_bad_images_as_the_cpu_path_does_naming_the_first():
    front = front_spec("jpeg").preprocess
    good = encode(photo(120, 90, 8))
    truncated = good[: len(good) // 2]
    for bad in (b"GIF89a not an image", truncated, b"\xff\xd8\xff\xe0 broken header", jpeg_claiming(9000, 9000),
                good + b"\x00" * (front.max_image_bytes)):
        client = images_array([good, bad, good, b"second bad image"])
        expected = problem_text(Preprocessor(front), client)
        assert problem_text(DevicePreprocessor(front, "cpu"), client) == expected
        assert expected[0] == 1


# -- a real server ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def device_repository(tmp_path_factory) -> Path:
    """The identity model (ONNX Runtime on the CPU) with uint8 fronts configured auto, cpu and gpu, and a jpeg
    front configured gpu."""
    repository = tmp_path_factory.mktemp("device-fronts")
    for device in ("auto", "cpu", "gpu"):
        name = f"identity_{device}"
        write_identity_model(repository, name, "FP32")
        write_preprocess_front(repository, name, "uint8", RECIPE, device)
    write_preprocess_front(repository, "identity_gpu", "jpeg", RECIPE, "gpu")
    return repository


@pytest.fixture(scope="module")
def device_server(device_repository, start_module_server):
    return start_module_server(device_repository)


@pytest.fixture(scope="module")
def client(device_server):
    with grpcclient.InferenceServerClient(device_server.grpc_url) as c:
        yield c


def test_model_config_reports_the_configured_and_the_effective_device(client):
    for configured in ("auto", "cpu", "gpu"):
        config = client.get_model_config(f"identity_{configured}_uint8", as_json=True)["config"]
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        assert parameters["ipsbench.preprocess.device"] == configured
        # The identity engine runs on ONNX Runtime's CPU provider: auto picks the CPU; gpu does where CUDA is absent.
        effective = "gpu" if configured == "gpu" and CUDA else "cpu"
        assert parameters["ipsbench.preprocess.device_effective"] == effective


def test_metrics_say_where_each_front_preprocesses(device_server, client):
    samples = scrape(device_server.metrics_url)
    gpu = "gpu" if CUDA else "cpu"
    for model, device in (("identity_auto_uint8", "cpu"), ("identity_cpu_uint8", "cpu"),
                          ("identity_gpu_uint8", gpu), ("identity_gpu_jpeg", gpu)):
        assert metric(samples, "ipsbench_preprocess_device", model=model, version="1", device=device) == 1
    plain = [labels for name, labels in samples if name == "ipsbench_preprocess_device" and
             ("model", "identity_cpu") in labels]
    assert not plain  # a model that takes its engine's tensors has no preprocessing device


@pytest.mark.skipif(CUDA, reason="CUDA is available here: gpu does not fall back")
def test_gpu_without_cuda_still_serves_and_warns_once_per_front(device_server, client):
    pixels = np.random.default_rng(3).integers(0, 256, (2, CROP, CROP, 3), dtype=np.uint8)
    tensor = grpcclient.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    served = client.infer("identity_gpu_uint8", [tensor], client_timeout=CALL_TIMEOUT_S).as_numpy("output")
    expected = ((pixels.astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    log = device_server.log()
    for model in ("identity_gpu_uint8", "identity_gpu_jpeg"):
        warning = f"model '{model}' version 1: ipsbench.preprocess.device is gpu, but "
        assert log.count(warning) == 1, log
    assert "identity_auto_uint8' version 1: ipsbench.preprocess.device is gpu" not in log
    assert "model 'identity_auto_uint8' version 1: preprocessing on the CPU (ipsbench.preprocess.device auto)" in log


def test_an_unknown_device_in_a_config_fails_that_model_with_the_reason(tmp_path, start_server):
    write_identity_model(tmp_path, "identity", "FP32")
    folder = write_preprocess_front(tmp_path, "identity", "uint8", RECIPE)
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace('string_value: "auto"', 'string_value: "fast"'))
    server = start_server(tmp_path, "--no-exit-on-error", wait_ready=False)
    server.wait_for_log("serving, but not ready: 1 model(s) failed to load")
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        reasons = {m.name: m.reason for m in c.get_model_repository_index().models if m.reason}
        assert c.is_model_ready("identity")
    reason = reasons["identity_uint8"]
    assert "parameter 'ipsbench.preprocess.device' must be one of auto, cpu, gpu, got 'fast'" in reason


def test_an_unknown_device_is_a_config_error_of_the_spec():
    config = front_spec("uint8").config
    config.parameters["ipsbench.preprocess.device"].string_value = "everywhere"
    with pytest.raises(ConfigError, match="'ipsbench.preprocess.device' must be one of auto, cpu, gpu, got 'every"):
        ModelSpec.from_config(config, "onnxruntime", "onnxruntime_onnx")


# -- the device path through the batcher and the PyTorch engine, on torch's CPU device ------------------------------


def test_device_path_tensors_go_through_the_batcher_and_the_torch_engine(tmp_path):
    """In process, with the server's loader, batcher and PyTorch instance (on the CPU): the stage's device path
    returns a torch tensor, concurrent requests are merged with torch.cat, and the engine computes on it."""
    write_identity_torchscript(tmp_path, "identity_pt", instance="count: 1 kind: KIND_CPU")
    write_preprocess_front(tmp_path, "identity_pt", "uint8", RECIPE, "cpu")
    sources, errors = scan_repository(tmp_path)
    assert not errors
    (loaded,) = load_source(next(source for source in sources if source.name == "identity_pt_uint8"))
    requests = [np.random.default_rng(i).integers(0, 256, (1 + i, CROP, CROP, 3), dtype=np.uint8) for i in range(3)]
    pool = DecodePool(2)

    async def serve() -> list[tuple[object, np.ndarray]]:
        model = LoadedModel(loaded, pool=pool)
        # What a GPU placement makes, on torch's CPU device: the same stage code, tensors instead of arrays.
        model.stage = PreprocessStage(model.spec, pool, model.stats.preprocess, Placement("gpu", "gpu", "cpu", False))
        model.batcher.start()
        try:
            staged = [await model.stage.run(ModelInputs({"image": pixels}, len(pixels), None)) for pixels in requests]
            results = await asyncio.gather(*(model.batcher.run(inputs) for inputs in staged))
            # Queued together within the 20 ms delay: fewer engine calls than requests, so tensors were merged.
            assert model.stats.execution_count < len(staged)
            return [(inputs.arrays["INPUT__0"], result.outputs[0]) for inputs, result in zip(staged, results)]
        finally:
            await model.batcher.stop()

    try:
        served = asyncio.run(serve())
    finally:
        pool.shutdown()
        for instance in loaded.instances:
            instance.close()
    for pixels, (tensor, output) in zip(requests, served):
        assert isinstance(tensor, torch.Tensor)
        expected = ((pixels.astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(output, expected, atol=1e-5)
