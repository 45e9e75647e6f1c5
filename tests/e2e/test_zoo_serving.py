"""Three torchvision architectures (one at a non-224 input) exported to ONNX and TorchScript, verified by the exporter,
served by a real ipsbench-serve, and compared with eager PyTorch; and every listed model builds at the size it claims.

The exports share one module-scoped repository with ``--max-batch-size 2`` so the CPU cost stays small:
Inception v3 (299x299), GoogLeNet and SqueezeNet 1.1 (224x224). Random weights (seed 0): the point is that the
served network computes what the PyTorch network computes, whatever the weights.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ipsbench.export import models

ROOT = Path(__file__).resolve().parents[2]
ZOO = ("inception_v3", "googlenet", "squeezenet1_1")
FORMATS = {"onnx": ("input", "output"), "torchscript": ("INPUT__0", "OUTPUT__0")}
MAX_BATCH = 2
VERIFY_IMAGES = 4
pytestmark = pytest.mark.timeout(1800)  # the module's six exports run in the first test's time
REAL_BUILD = ("regnet_x_400mf", "regnet_y_400mf")
"""RegNets compute their widths with tensor arithmetic while being built, so they cannot be built on the meta device;
the two smallest are built for real instead, and the eleven larger ones are not checked here."""


def served_name(model: str, fmt: str) -> str:
    return f"{model}_{fmt}"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The repository and, per served name, what the exporter printed."""
    repo = tmp_path_factory.mktemp("zoo")
    printed = {}
    for model in ZOO:
        for fmt in FORMATS:
            name = served_name(model, fmt)
            cmd = [sys.executable, "-m", "ipsbench.export", model, "--format", fmt, "--max-batch-size", str(MAX_BATCH),
                   "--verify-image-count", str(VERIFY_IMAGES), "--name", name, "--out", str(repo)]
            result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
            printed[name] = result.stdout
    return repo, printed


def test_every_export_was_verified_on_random_batches_and_images(zoo):
    _, printed = zoo
    for name, out in printed.items():
        verdicts = [line for line in out.splitlines() if line.startswith("verify ")]
        assert [line.split(":")[0] for line in verdicts] == ["verify batch 1", "verify batch 2", f"verify images {VERIFY_IMAGES}"], name
        assert all(line.endswith(": ok") for line in verdicts), out


def test_configs_carry_each_models_own_input_size(zoo):
    repo, _ = zoo
    for model in ZOO:
        side = 299 if model == "inception_v3" else 224
        for fmt, (input_name, _) in FORMATS.items():
            config = text_format.Parse((repo / served_name(model, fmt) / "config.pbtxt").read_text(), mc.ModelConfig())
            assert [(t.name, list(t.dims)) for t in config.input] == [(input_name, [3, side, side])]


def test_served_outputs_match_pytorch_for_every_architecture_and_format(zoo, start_server):
    repo, _ = zoo
    server = start_server(repo)
    rng = np.random.default_rng(11)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for model in ZOO:
            spec = models.describe(model)
            x = rng.standard_normal((MAX_BATCH, 3, spec.crop_size, spec.crop_size), dtype=np.float32)
            with torch.inference_mode():
                eager = models.build(model, seed=0)(torch.from_numpy(x)).numpy()
            scale = float(np.abs(eager).max())
            for fmt, (input_name, output_name) in FORMATS.items():
                tensor = grpcclient.InferInput(input_name, list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                served = client.infer(served_name(model, fmt), [tensor]).as_numpy(output_name)
                assert served.shape == (MAX_BATCH, spec.num_classes)
                # Relative to the largest logit: random weights give logits from 1e-2 (GoogLeNet) to 1e12
                # (Inception v3), so an absolute tolerance would be vacuous for one and impossible for the other.
                np.testing.assert_allclose(served, eager, rtol=0, atol=1e-4 * scale, err_msg=f"{model} {fmt}")
                assert (served.argmax(1) == eager.argmax(1)).all(), f"{model} {fmt}"


def _meta_models() -> list[str]:
    return [name for name in models.available_models() if not name.startswith("regnet_")]


@pytest.mark.parametrize("name", _meta_models())
def test_listed_model_builds_without_weights_at_its_listed_size(name):
    """Built with weights=None on the meta device (structure and shapes, no memory or arithmetic): a forward pass at
    the listed crop size gives one logit per label."""
    spec = models.describe(name)
    network = models.build(name, device="meta")
    output = network(torch.empty(1, 3, spec.crop_size, spec.crop_size, device="meta"))
    assert tuple(output.shape) == (1, spec.num_classes)


@pytest.mark.parametrize("name", REAL_BUILD)
def test_regnets_build_on_the_cpu_at_their_listed_size(name):
    spec = models.describe(name)
    with torch.inference_mode():
        output = models.build(name)(torch.zeros(1, 3, spec.crop_size, spec.crop_size))
    assert tuple(output.shape) == (1, spec.num_classes)


def test_vit_h_14_is_built_at_the_size_of_its_default_weights():
    """Its default weights (SWAG, end to end) are at 518x518; the builder's own default is 224, which would make a
    model that neither takes the listed size nor loads those weights."""
    spec = models.describe("vit_h_14")
    assert spec.crop_size == 518 and spec.interpolation == "bicubic"
    assert models.build("vit_h_14", device="meta").image_size == 518


def test_preprocessing_constants_follow_the_weights_recipe():
    assert models.describe("efficientnet_v2_l").mean == (0.5, 0.5, 0.5)
    resnet = models.describe("resnet50")
    assert (resnet.resize_size, resnet.crop_size, resnet.interpolation) == (232, 224, "bilinear")
    assert models.describe("alexnet").resize_size == 256  # the transform's default where the weights give none
    assert models.describe("inception_v3").resize_size == 342
