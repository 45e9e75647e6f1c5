"""ipsbench-export --format torchscript writes a Triton libtorch entry, checksummed and verified against PyTorch."""
import hashlib
import subprocess
import sys

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc


def read_config(path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def parameters(config: mc.ModelConfig) -> dict[str, str]:
    """The engine's parameters (the preprocessing recipe, which every exported config states, left out)."""
    return {key: value.string_value for key, value in config.parameters.items()
            if not key.startswith("ipsbench.preprocess")}


def test_torchscript_entry_has_triton_names_a_checksum_and_cpu_settings(torchscript_repository):
    entry = torchscript_repository / "resnet18_pt"
    model = entry / "1" / "model.pt"
    digest, filename = (entry / "1" / "model.pt.sha256").read_text().split()
    assert (digest, filename) == (hashlib.sha256(model.read_bytes()).hexdigest(), "model.pt")
    config = read_config(entry / "config.pbtxt")
    assert (config.platform, config.backend, config.max_batch_size) == ("pytorch_libtorch", "pytorch", 8)
    assert [(t.name, list(t.dims)) for t in config.input] == [("INPUT__0", [3, 64, 64])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("OUTPUT__0", [1000])]
    assert config.HasField("dynamic_batching")
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert parameters(config) == {"precision": "fp32", "channels_last": "false", "ipsbench.network": "resnet18"}
    assert len((entry / "labels.txt").read_text().splitlines()) == 1000
    recipe = {key: value.string_value for key, value in config.parameters.items() if key not in parameters(config)}
    assert recipe == {"ipsbench.preprocess.resize": "73", "ipsbench.preprocess.crop": "64",
                      "ipsbench.preprocess.mean": "0.485,0.456,0.406", "ipsbench.preprocess.std": "0.229,0.224,0.225",
                      "ipsbench.preprocess.interpolation": "bilinear"}


def test_gpu_export_asks_for_gpu_fp16_channels_last_and_says_where_it_was_verified(torchscript_gpu_export):
    config = read_config(torchscript_gpu_export.repository / "resnet18_gpu" / "config.pbtxt")
    assert [(g.kind, list(g.gpus)) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, [0])]
    assert parameters(config) == {"precision": "fp16", "channels_last": "true", "ipsbench.network": "resnet18"}
    out = torchscript_gpu_export.stdout
    if torch.cuda.is_available():
        assert "verify batch 4:" in out and "on cuda:0 in fp16: ok" in out
    else:
        assert "CUDA is not available here: verifying on the CPU (the file computes in fp16 itself)" in out
        assert "verify batch 4:" in out and "on cpu in fp16: ok" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "torchscript", "--precision", "fp16"], "--precision fp16 needs --device gpu"),
        (["--format", "torchscript", "--cuda-graphs"], "--cuda-graphs needs --device gpu"),
        (["--calibration-images", "images"], "--calibration-images applies to --precision int8 only"),
        (["--format", "torchscript", "--precision", "int8", "--device", "gpu"],
         "--precision int8 needs --format onnx or tensorrt"),
        (["--precision", "int8", "--calibration-limit", "0"], "--calibration-limit"),
        (["--min-agreement", "1.5"], "--min-agreement"),
        (["--cuda-graphs", "--device", "gpu"], "--cuda-graphs applies to --format torchscript only"),
        (["--format", "tensorrt", "--device", "cpu"], "--format tensorrt builds a GPU engine"),
        (["--format", "tensorrt", "--channels-last"], "--channels-last applies to --format torchscript only"),
    ],
)
def test_options_that_do_not_fit_the_format_or_device_are_refused(args, message, tmp_path):
    cmd = [sys.executable, "-m", "ipsbench.export", "resnet18", "--out", str(tmp_path), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert not any(tmp_path.iterdir())
