"""FP16 ONNX (FP16 weights and arithmetic behind FP32 inputs), the P40 preset, and the preprocessing fronts."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ipsbench.export import models, preset

ROOT = Path(__file__).resolve().parents[2]


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipsbench.export", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    repo = tmp_path_factory.mktemp("fp16")
    result = run_export("squeezenet1_1", "--precision", "fp16", "--image-size", "96", "--max-batch-size", "4",
                        "--name", "squeeze_fp16", "--out", str(repo))
    assert result.returncode == 0, result.stdout + result.stderr
    return repo, result.stdout


def test_fp16_onnx_keeps_fp32_io_with_fp16_weights_and_is_verified_in_fp16(fp16_export):
    repo, out = fp16_export
    model = onnx.load(str(repo / "squeeze_fp16" / "1" / "model.onnx"))
    float_type = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [float_type]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [float_type]
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]  # convolution kernels
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    verdicts = [line for line in out.splitlines() if line.startswith("verify ")]
    assert len(verdicts) == 3 and all(line.endswith("in fp16: ok") for line in verdicts), out
    assert "top-1 agreement 100% (at least 90%)" in verdicts[-1]
    config = text_format.Parse((repo / "squeeze_fp16" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.parameters["precision"].string_value == "fp16"
    assert config.input[0].data_type == mc.TYPE_FP32


def test_fp16_onnx_serves_pytorchs_answer_within_the_fp16_tolerance(fp16_export, start_server):
    repo, _ = fp16_export
    x = np.random.default_rng(4).standard_normal((4, 3, 96, 96)).astype(np.float32)
    with torch.inference_mode():
        eager = models.build("squeezenet1_1", seed=0)(torch.from_numpy(x)).numpy()
    server = start_server(repo)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        served = client.infer("squeeze_fp16", [tensor]).as_numpy("output")
    scale = float(np.abs(eager).max())
    difference = float(np.abs(served - eager).max())
    assert difference <= 1e-2 * scale, (difference, scale)
    assert difference > 0, "bit-identical to FP32: the model did not compute in FP16"
    assert (served.argmax(1) == eager.argmax(1)).all()
    assert "cpu, fp16" in server.log()


ALL = [f"{m}_{p}" for m in ("alexnet", "googlenet", "resnet50") for p in ("fp32", "fp16", "int8")]


@pytest.mark.parametrize(
    "cuda, ort_cuda, tensorrt, engines",
    [
        (False, False, False, {"fp32": ("onnx", "cpu"), "fp16": ("onnx", "cpu"), "int8": ("onnx", "cpu")}),
        (True, False, False, {"fp32": ("torchscript", "gpu"), "fp16": ("torchscript", "gpu"), "int8": ("onnx", "cpu")}),
        (True, True, False, {"fp32": ("onnx", "gpu"), "fp16": ("torchscript", "gpu"), "int8": ("onnx", "cpu")}),
        (True, True, True, {"fp32": ("onnx", "gpu"), "fp16": ("tensorrt", "gpu"), "int8": ("tensorrt", "gpu")}),
    ],
)
def test_p40_preset_builds_each_precision_with_what_the_machine_runs(cuda, ort_cuda, tensorrt, engines):
    chosen = preset.variants("p40", cuda, tensorrt, ort_cuda)
    assert [v.name for v in chosen] == ALL
    assert {v.precision: (v.format, v.device) for v in chosen} == engines


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the preset would build the GPU variants too")
def test_p40_preset_on_a_cpu_writes_every_precision_as_onnx(tmp_path):
    result = run_export("--preset", "p40", "--image-size", "64", "--max-batch-size", "2", "--verify-image-count", "2",
                        "--calibration-limit", "4", "--min-agreement", "0", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"preset p40: 9 exports ({', '.join(ALL)}); CUDA no, TensorRT no" in result.stderr
    for name in ALL:
        config = text_format.Parse((tmp_path / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert config.platform == "onnxruntime_onnx" and (tmp_path / name / "1" / "model.onnx").is_file()
        assert json.loads((tmp_path / name / "export.json").read_text())["precision"] == name.rsplit("_", 1)[1]
    assert "[9/9] resnet50_int8: onnx int8" in result.stderr


def test_preset_refuses_a_model_name(tmp_path):
    result = run_export("resnet50", "--preset", "p40", "--out", str(tmp_path))
    assert result.returncode == 2 and "--preset names its own models" in result.stderr


def test_front_option_writes_a_jpeg_and_a_uint8_front(tmp_path):
    result = run_export("squeezenet1_1", "--image-size", "64", "--max-batch-size", "2", "--verify-image-count", "2",
                        "--front", "jpeg,uint8", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    fronts = [line for line in result.stdout.splitlines() if line.startswith("wrote the ")]
    assert [line.split()[2] for line in fronts] == ["jpeg", "uint8"]
    for line in fronts:
        assert Path(line.split(" front ", 1)[1]).exists()


def test_front_option_takes_only_known_kinds(tmp_path):
    result = run_export("squeezenet1_1", "--front", "jpeg,png", "--out", str(tmp_path))
    assert result.returncode == 2 and "--front takes a comma-separated list of jpeg, uint8" in result.stderr
