"""The PyTorch backend on a CUDA GPU: FP16 agreement with eager FP32, CUDA graphs at every batch size and with
concurrent instances, and the engine bench on the GPU. Skipped where CUDA is not available."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from google.protobuf import text_format
from server_helpers import CALL_TIMEOUT_S, infer_request, output_array
from torch_helpers import Affine, write_torchscript_model
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2_grpc

from ipsbench.export import models
from ipsbench.export.verify import compare

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is false)"),
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def eager():
    return models.build("resnet18", seed=0)


def reference(network, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return network(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def gpu_repository(torchscript_gpu_export, tmp_path_factory) -> Path:
    """``resnet18_gpu`` as exported (FP16, channels-last), the same file with CUDA graphs and two instances
    (``resnet18_graphs``), and an exact FP32 affine model with CUDA graphs and two instances (``affine_graphs``)."""
    repo = tmp_path_factory.mktemp("gpu-models")
    source = torchscript_gpu_export.repository / "resnet18_gpu"
    shutil.copytree(source, repo / "resnet18_gpu")
    shutil.copytree(source, repo / "resnet18_graphs")
    config = text_format.Parse((source / "config.pbtxt").read_text(), mc.ModelConfig())
    config.name = "resnet18_graphs"
    config.parameters["cuda_graphs"].string_value = "true"
    config.instance_group[0].count = 2
    (repo / "resnet18_graphs" / "config.pbtxt").write_text(text_format.MessageToString(config))
    write_torchscript_model(
        repo, "affine_graphs", module=Affine(), inputs=["INPUT__0"], outputs=["OUTPUT__0"], features=16,
        instance="count: 2 kind: KIND_GPU gpus: [ 0 ]", parameters={"cuda_graphs": "true"},
    )
    return repo


@pytest.fixture(scope="module")
def gpu_stub(gpu_repository, start_module_server):
    server = start_module_server(gpu_repository)
    assert "captured 4 CUDA graph(s) for batch sizes [1, 2, 4, 8]" in server.log()
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def infer(stub, model: str, x: np.ndarray) -> np.ndarray:
    return output_array(stub.ModelInfer(infer_request(model, x, input_name="INPUT__0"), timeout=CALL_TIMEOUT_S))


@pytest.mark.parametrize("model", ["resnet18_gpu", "resnet18_graphs"])
def test_fp16_on_the_gpu_agrees_with_eager_fp32_at_every_batch_size(gpu_stub, eager, model):
    rng = np.random.default_rng(11)
    for batch in (1, 3, 8):  # 3 runs in the graph of 4, padded
        x = rng.standard_normal((batch, 3, 64, 64)).astype(np.float32)
        served = infer(gpu_stub, model, x)
        assert served.shape == (batch, 1000) and served.dtype == np.float32
        check = compare(batch, served, reference(eager, x), "cuda:0", "fp16")
        assert check.ok, check
        assert check.top1_agree >= 0.6, check


def test_cuda_graphs_keep_concurrent_requests_apart(gpu_stub):
    inputs = [np.full((1 + i % 8, 16), i, dtype=np.float32) for i in range(64)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        outputs = list(pool.map(lambda x: infer(gpu_stub, "affine_graphs", x), inputs))
    for x, y in zip(inputs, outputs):
        np.testing.assert_array_equal(y, 2 * x + 1)


def test_bench_on_the_gpu_names_the_device_and_precision(gpu_repository, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, "-m", "ipsbench.server", "bench", "resnet18_graphs", "--model-repository", str(gpu_repository),
        "--batch-sizes", "1,8", "--duration", "0.5s", "--warmup", "0.2s", "--json", str(out),
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert (report["device"], report["precision"]) == ("cuda:0", "fp16")
    assert report["device_name"] == torch.cuda.get_device_name(0)
    assert [r["batch_size"] for r in report["results"]] == [1, 8]
    assert all(r["images_per_s"] > 0 for r in report["results"])
