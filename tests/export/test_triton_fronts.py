"""``ipsbench-export --front jpeg,uint8 --triton-fronts DIR``: Triton's equivalent of ipsbench's preprocessing fronts.

ipsbench-serve's ``<name>_jpeg`` / ``<name>_uint8`` entries preprocess inside the server from config parameters that
Triton ignores; ``--triton-fronts`` writes, for the same request stream, a Python-backend preprocessing model and an
ensemble named like the front. Triton itself cannot run here, so the written repository is checked as Triton reads
it (each ``config.pbtxt`` parsed as a ModelConfig, the ensemble's tensors wired step to step), and the
preprocessing model's ``model.py`` is run as Triton's Python-backend stub runs it: imported with a stand-in for
``triton_python_backend_utils`` (the stub's module, which exists only inside Triton), given the model config as the
JSON Triton passes, and called with requests. Its tensor must equal ipsbench's preprocessing byte for byte, and the
classifier's logits on it must match what ipsbench-serve's own front answers for the same images.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import types

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from conftest import ROOT, run_export
from google.protobuf import json_format, text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc

from ipsbench.server.preprocess.image import image_tensor, normalized
from ipsbench.server.preprocess.recipe import read_parameters

NAME = "resnet18"
KINDS = ("jpeg", "uint8")


# -- the export and Triton's view of it ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """One real export of resnet18 (64x64) with both fronts and their Triton equivalents."""
    root = tmp_path_factory.mktemp("triton-fronts")
    run = run_export(root / "models", NAME, "--front", ",".join(KINDS), "--triton-fronts", str(root / "triton"))
    return types.SimpleNamespace(repository=root / "models", triton=root / "triton", stdout=run.stdout)


def read_config(folder) -> mc.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


def ipsbench_recipe(export, kind: str):
    """The recipe ipsbench-serve's own ``<name>_<kind>`` front preprocesses with."""
    config = read_config(export.repository / f"{NAME}_{kind}")
    recipe, front = read_parameters({key: value.string_value for key, value in config.parameters.items()})
    assert front is not None and front.kind == kind
    return recipe


def test_the_triton_repository_holds_the_classifier_each_preprocess_model_and_each_ensemble(export):
    folders = sorted(path.name for path in export.triton.iterdir())
    assert folders == sorted([NAME, *(f"{NAME}_{k}" for k in KINDS), *(f"{NAME}_{k}_preprocess" for k in KINDS)])
    assert f"wrote for Triton: {export.triton / NAME}" in export.stdout
    plain = read_config(export.repository / NAME)
    assert read_config(export.triton / NAME) == plain
    model = export.repository / NAME / "1" / "model.onnx"
    assert os.path.samefile(model, export.triton / NAME / "1" / "model.onnx"), "the model file is linked, not copied"
    # Triton's ensembles and Python models carry no ipsbench parameter it would ignore.
    engine = plain.input[0]
    for kind in KINDS:
        preprocess = read_config(export.triton / f"{NAME}_{kind}_preprocess")
        assert preprocess.backend == "python" and preprocess.max_batch_size == plain.max_batch_size
        assert (export.triton / preprocess.name / "1" / "model.py").is_file()
        assert preprocess.HasField("dynamic_batching")
        assert [g.kind for g in preprocess.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert [(o.name, o.data_type, list(o.dims)) for o in preprocess.output] == [
            (engine.name, engine.data_type, list(engine.dims))
        ]
        assert "ipsbench.preprocess.device" not in preprocess.parameters


@pytest.mark.parametrize("kind, image_type, image_dims", [
    ("jpeg", mc.TYPE_STRING, [1]), ("uint8", mc.TYPE_UINT8, [64, 64, 3]),
])
def test_each_ensemble_takes_the_fronts_input_and_wires_preprocess_into_the_classifier(
    export, kind, image_type, image_dims
):
    plain = read_config(export.repository / NAME)
    ipsbench_front = read_config(export.repository / f"{NAME}_{kind}")
    ensemble = read_config(export.triton / f"{NAME}_{kind}")
    preprocess = read_config(export.triton / f"{NAME}_{kind}_preprocess")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == plain.max_batch_size
    assert (export.triton / ensemble.name / "1").is_dir(), "Triton wants a version folder for an ensemble too"
    # The same request stream reaches both servers: the same model name, input and outputs as ipsbench's front.
    assert ensemble.name == ipsbench_front.name
    assert [(i.name, i.data_type, list(i.dims)) for i in ensemble.input] == [("image", image_type, image_dims)]
    assert list(ensemble.input) == list(ipsbench_front.input) == list(preprocess.input)
    assert list(ensemble.output) == list(plain.output)
    for output in plain.output:
        label = output.label_filename
        assert (export.triton / ensemble.name / label).read_bytes() == (export.repository / NAME / label).read_bytes()

    first, second = ensemble.ensemble_scheduling.step
    assert (first.model_name, second.model_name) == (preprocess.name, NAME)
    assert dict(first.input_map) == {"image": "image"}
    # The tensor between the steps is the preprocessing output and the classifier's input, of one shape and type.
    (between,) = first.output_map.values()
    assert dict(first.output_map) == {preprocess.output[0].name: between}
    assert dict(second.input_map) == {plain.input[0].name: between}
    assert preprocess.output[0].name == plain.input[0].name
    assert dict(second.output_map) == {o.name: o.name for o in plain.output}


# -- model.py as Triton's Python backend runs it -------------------------------------------------------------------


class BackendTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class BackendError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class BackendResponse:
    def __init__(self, output_tensors, error=None) -> None:
        self.output_tensors, self.error = output_tensors, error


def backend_utils() -> types.ModuleType:
    """The part of Triton's ``triton_python_backend_utils`` a preprocessing model calls."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor, module.TritonError, module.InferenceResponse = BackendTensor, BackendError, BackendResponse
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    return module


@pytest.fixture
def preprocess_model(export, monkeypatch):
    """``preprocess_model(kind)`` → the written ``model.py``'s TritonPythonModel, initialized as Triton does."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", backend_utils())

    def load(kind: str):
        folder = export.triton / f"{NAME}_{kind}_preprocess"
        spec = importlib.util.spec_from_file_location(f"written_{kind}_preprocess", folder / "1" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.TritonPythonModel()
        config = json_format.MessageToJson(read_config(folder), preserving_proto_field_name=True)
        model.initialize({"model_config": config, "model_instance_kind": "CPU", "model_name": folder.name})
        return model

    return load


def image_request(images: list[bytes]) -> dict:
    """A request as the stub hands it over: the BYTES input ``image`` of shape [K, 1] as an object array."""
    return {"image": BackendTensor("image", np.array(images, dtype=np.object_).reshape(-1, 1))}


def photo(width: int, height: int, seed: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A smooth image with noise and an edge, encoded: enough detail that resampling differences would show."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    pixels = np.stack([x, y, 255 - x], axis=2) + rng.normal(0, 12, (height, width, 3))
    pixels[height // 3 : height // 2, width // 4 : width // 2] = (250, 20, 40)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    """Landscape and portrait JPEGs (decoded downscaled by 8 and 4 in the DCT domain), a small one (upscaled), a PNG, a
    greyscale JPEG and a CMYK JPEG (Pillow's path)."""
    return [photo(1200, 900, 8), photo(500, 375, 1), photo(375, 500, 2), photo(60, 45, 3), photo(200, 150, 4, "PNG"),
            photo(320, 240, 5, mode="L"), photo(300, 200, 6, mode="CMYK")]


def test_jpeg_preprocessing_equals_ipsbench_byte_for_byte(export, preprocess_model, images):
    model, recipe = preprocess_model("jpeg"), ipsbench_recipe(export, "jpeg")
    (response,) = model.execute([image_request(images)])
    assert response.error is None
    (tensor,) = response.output_tensors
    assert tensor.name() == read_config(export.repository / NAME).input[0].name
    expected = np.stack([image_tensor(data, recipe) for data in images])
    assert tensor.as_numpy().dtype == expected.dtype and tensor.as_numpy().shape == expected.shape
    assert tensor.as_numpy().tobytes() == expected.tobytes()


def test_uint8_preprocessing_equals_ipsbench_byte_for_byte(export, preprocess_model):
    model, recipe = preprocess_model("uint8"), ipsbench_recipe(export, "uint8")
    pixels = np.random.default_rng(7).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    (response,) = model.execute([{"image": BackendTensor("image", pixels)}])
    assert response.error is None
    expected = np.stack([normalized(p, recipe) for p in pixels])
    assert response.output_tensors[0].as_numpy().tobytes() == expected.tobytes()


def test_a_bad_image_fails_only_its_own_request(preprocess_model, images):
    model = preprocess_model("jpeg")
    truncated = images[1][: len(images[1]) // 3]
    requests = [image_request(images[:2]), image_request([images[2], b"GIF89a not an image"]),
                image_request([truncated]), image_request(images[2:3])]
    good, not_an_image, cut, last = model.execute(requests)
    assert good.error is None and good.output_tensors[0].as_numpy().shape == (2, 3, 64, 64)
    assert not not_an_image.output_tensors and "image 1 of the request: not a JPEG or PNG image" in (
        not_an_image.error.message()
    )
    assert not cut.output_tensors and "image 0 of the request" in cut.error.message()
    assert last.error is None and last.output_tensors[0].as_numpy().shape == (1, 3, 64, 64)


def test_a_wrong_pixel_array_is_refused_with_its_shape(preprocess_model):
    model = preprocess_model("uint8")
    (response,) = model.execute([{"image": BackendTensor("image", np.zeros((1, 32, 32, 3), np.uint8))}])
    assert not response.output_tensors
    assert "must be uint8 [N, 64, 64, 3], got uint8 [1, 32, 32, 3]" in response.error.message()


def test_triton_pipeline_answers_what_ipsbench_serves_for_the_same_images(
    export, preprocess_model, images, start_server
):
    """The ensemble's two steps run here (model.py, then the copied classifier in ONNX Runtime, as Triton's ONNX
    Runtime backend would) against ipsbench-serve's own ``resnet18_jpeg`` answer for the same request."""
    (response,) = preprocess_model("jpeg").execute([image_request(images)])
    plain = read_config(export.triton / NAME)
    session = ort.InferenceSession(str(export.triton / NAME / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (triton_logits,) = session.run([plain.output[0].name], {plain.input[0].name: response.output_tensors[0].as_numpy()})

    server = start_server(export.repository)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("image", [len(images), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
        served = client.infer(f"{NAME}_jpeg", [tensor], client_timeout=60).as_numpy(plain.output[0].name)
    assert served.shape == triton_logits.shape == (len(images), 1000)
    # The same tensor through the same ONNX graph: equal up to the thread split of ONNX Runtime's reductions.
    np.testing.assert_allclose(served, triton_logits, rtol=1e-4, atol=1e-4)
    assert (served.argmax(axis=1) == triton_logits.argmax(axis=1)).all()


# -- refused before any export -------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--triton-fronts", "{tmp}/triton"], "--triton-fronts writes Triton's equivalent of the fronts --front writes"),
    (["--front", "jpeg", "--triton-fronts", "{tmp}/models"], "--triton-fronts needs a folder of its own, not --out"),
    (["--simulate", "{tmp}/profile.json", "--triton-fronts", "{tmp}/triton"], "--simulate exports no network"),
])
def test_options_that_cannot_apply_are_refused_before_any_export(tmp_path, args, message):
    args = [arg.format(tmp=tmp_path) for arg in args]
    result = subprocess.run(
        [sys.executable, "-m", "ipsbench.export", NAME, "--out", str(tmp_path / "models"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "triton").exists()


def test_model_py_imports_nothing_of_ipsbench(export):
    """Triton's stub runs model.py with Triton's Python: only numpy, Pillow, simplejpeg and the standard library."""
    source = (export.triton / f"{NAME}_jpeg_preprocess" / "1" / "model.py").read_text()
    imported = {line.split()[1].split(".")[0] for line in source.splitlines()
                if line.startswith(("import ", "from ")) or line.strip().startswith(("import ", "from "))}
    assert imported <= {"io", "json", "numpy", "PIL", "triton_python_backend_utils", "simplejpeg"}, imported
