"""ipsbench-export writes a Triton-layout entry whose ONNX model computes what the PyTorch model computes."""
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ipsbench.export import models


def run_export(*args):
    return subprocess.run([sys.executable, "-m", "ipsbench.export", *args], capture_output=True, text=True, timeout=300)


def test_layout_and_config(model_repository):
    entry = model_repository / "resnet18"
    assert (entry / "1" / "model.onnx").is_file()
    config = text_format.Parse((entry / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == "resnet18"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert list(config.input[0].dims) == [3, 64, 64]
    assert list(config.output[0].dims) == [1000]
    assert config.HasField("dynamic_batching")
    labels = (entry / config.output[0].label_filename).read_text().splitlines()
    assert len(labels) == 1000 and labels[0] == "tench"


def test_onnx_matches_pytorch_on_fresh_inputs_at_several_batch_sizes(model_repository):
    session = ort.InferenceSession(str(model_repository / "resnet18" / "1" / "model.onnx"))
    network = models.build("resnet18", seed=0)  # the same seed the fixture exported with
    rng = np.random.default_rng(123)
    for batch in (1, 3, 8):
        x = rng.standard_normal((batch, 3, 64, 64), dtype=np.float32)
        (ours,) = session.run(None, {"input": x})
        with torch.inference_mode():
            reference = network(torch.from_numpy(x)).numpy()
        assert ours.shape == (batch, 1000)
        np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3)


def test_cli_reports_agreement_and_names_every_check(tmp_path):
    result = run_export("squeezenet1_1", "--image-size", "96", "--max-batch-size", "4", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "verify batch 1: max abs diff" in result.stdout
    assert "verify batch 4: max abs diff" in result.stdout
    config = text_format.Parse((tmp_path / "squeezenet1_1" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert list(config.input[0].dims) == [3, 96, 96]


def test_list_shows_models_with_their_input_size():
    result = run_export("--list")
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "299x299" in lines["inception_v3"]
    assert "224x224" in lines["resnet50"]


@pytest.mark.parametrize("args, message", [(["nonet"], "unknown model 'nonet'"), ([], "a model name is required")])
def test_bad_arguments_fail_with_a_message(args, message, tmp_path):
    result = run_export(*args, "--out", str(tmp_path))
    assert result.returncode != 0
    assert message in result.stderr
