"""TensorRT: ``ipsbench-export --format tensorrt`` and the server's ``tensorrt_plan`` backend. Without TensorRT both
say what to install; the real build, verification and serving run only where TensorRT and a GPU are present."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ipsbench.server.repository.checksum import write_checksum

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "pip install 'ipsbench[tensorrt]'"


def _tensorrt_and_gpu() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    from ipsbench.server.engines.tensorrt_engine import TensorRTUnavailable, import_runtime

    try:
        import_runtime()
    except TensorRTUnavailable:
        return False
    return True


HAS_TENSORRT = _tensorrt_and_gpu()
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason="needs TensorRT and a GPU")
without_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT and a GPU are present: the real path runs")


def _export(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ipsbench.export", "resnet18", "--image-size", "64", "--max-batch-size", "4",
           "--format", "tensorrt", "--out", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


@without_tensorrt
def test_export_without_tensorrt_names_the_extra_and_writes_nothing(tmp_path):
    result = _export(tmp_path / "models", "--precision", "fp16")
    assert result.returncode == 1
    assert "ipsbench-export --format tensorrt needs" in result.stderr
    assert INSTALL in result.stderr or "NVIDIA GPU" in result.stderr
    assert not (tmp_path / "models").exists()


def _write_plan_entry(repo: Path, name: str) -> None:
    """A tensorrt_plan entry as the exporter writes it; the plan bytes are never reached without TensorRT."""
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    plan = folder / "1" / "model.plan"
    plan.write_bytes(b"not an engine")
    write_checksum(plan)
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "tensorrt_plan"\nmax_batch_size: 4\n'
        'input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] } ]\n'
        'output [ { name: "output" data_type: TYPE_FP32 dims: [ 10 ] } ]\n'
        "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]\n"
    )


@without_tensorrt
def test_plan_model_fails_to_load_naming_the_extra_while_others_serve(tmp_path, write_test_model, start_server):
    _write_plan_entry(tmp_path, "engine")
    write_test_model(tmp_path, "affine")
    server = start_server(tmp_path, "--no-exit-on-error", wait_ready=False)
    server.wait_for_log("serving, but not ready: 1 model(s) failed to load")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        reasons = {m.name: m.reason for m in client.get_model_repository_index().models}
        assert not client.is_model_ready("engine")
        assert client.is_model_ready("affine")
    assert "the TensorRT backend needs" in reasons["engine"]
    assert INSTALL in reasons["engine"] or "NVIDIA GPU" in reasons["engine"]


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_is_built_verified_and_served_like_pytorch(precision, tmp_path, start_server):
    import torch

    from ipsbench.export import models

    repo = tmp_path / "models"
    result = _export(repo, "--precision", precision, "--name", f"r18_{precision}")
    assert result.returncode == 0, result.stdout + result.stderr
    entry = repo / f"r18_{precision}"
    assert (entry / "1" / "model.plan").is_file() and (entry / "1" / "model.plan.sha256").is_file()
    assert (entry / "timing.cache").is_file()
    if precision == "int8":  # explicit quantization: the engine came from the exporter's Q/DQ graph
        assert "calibrat" in result.stdout
    config = text_format.Parse((entry / "config.pbtxt").read_text(), mc.ModelConfig())
    assert (config.platform, config.backend) == ("tensorrt_plan", "tensorrt")
    assert "verify images 16:" in result.stdout and f"on cuda:0 in {precision}: ok" in result.stdout

    x = np.random.default_rng(3).standard_normal((3, 3, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        eager = models.build("resnet18", seed=0)(torch.from_numpy(x)).numpy()
    server = start_server(repo)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        served = client.infer(f"r18_{precision}", [tensor]).as_numpy("output")
    if precision != "int8":
        scale = float(np.abs(eager).max())
        np.testing.assert_allclose(served, eager, rtol=0, atol=(1e-3 if precision == "fp32" else 2e-2) * scale)
    assert served.shape == (3, 1000)


@pytest.mark.gpu
@needs_tensorrt
def test_tampered_plan_is_refused_before_deserialization(tmp_path, start_server):
    repo = tmp_path / "models"
    assert _export(repo, "--precision", "fp16", "--name", "r18").returncode == 0
    plan = repo / "r18" / "1" / "model.plan"
    plan.write_bytes(plan.read_bytes() + b"\0")
    server = start_server(repo, "--no-exit-on-error", wait_ready=False)
    server.wait_for_log("serving, but not ready: 1 model(s) failed to load")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        reasons = {m.name: m.reason for m in client.get_model_repository_index().models}
    assert "does not match model.plan.sha256" in reasons["r18"]
