"""The PyTorch backend through ipsbench-serve and Triton's client: TorchScript on the CPU, tensor naming, checksums,
and a clear failure for a GPU model where CUDA is missing."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
from torch_helpers import Affine, TwoInTwoOut, write_torchscript_model

from ipsbench.export import models


def _input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def test_served_torchscript_matches_the_onnx_export_and_eager_pytorch(
    torchscript_repository, model_repository, start_server
):
    server = start_server(torchscript_repository)
    x = np.random.default_rng(7).standard_normal((3, 3, 64, 64)).astype(np.float32)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        meta = client.get_model_metadata("resnet18_pt")
        assert meta.platform == "pytorch_libtorch"
        assert [(t.name, list(t.shape)) for t in meta.inputs] == [("INPUT__0", [-1, 3, 64, 64])]
        served = client.infer("resnet18_pt", [_input("INPUT__0", x)]).as_numpy("OUTPUT__0")
    (onnx_out,) = ort.InferenceSession(str(model_repository / "resnet18" / "1" / "model.onnx")).run(None, {"input": x})
    with torch.inference_mode():
        eager = models.build("resnet18", seed=0)(torch.from_numpy(x)).numpy()
    assert served.shape == (3, 1000) and served.dtype == np.float32
    np.testing.assert_allclose(served, eager, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(served, onnx_out, rtol=1e-3, atol=1e-3)
    assert (served.argmax(1) == eager.argmax(1)).all()


@pytest.fixture(scope="module")
def small_models_server(tmp_path_factory, start_module_server):
    """Tiny TorchScript models: two with two inputs and outputs (named by index, and by forward()'s arguments),
    and four that must fail to load (no checksum, tampered file, bad option, GPU-only option on a CPU instance)."""
    repo = tmp_path_factory.mktemp("torch-models")
    # Config order differs from forward() order on purpose: the names decide, not the order of declaration.
    indexed = {"inputs": ["INPUT__1", "INPUT__0"], "outputs": ["OUTPUT__1", "OUTPUT__0"]}
    write_torchscript_model(repo, "indexed", module=TwoInTwoOut(), **indexed)
    write_torchscript_model(repo, "named", module=TwoInTwoOut(), inputs=["b", "a"], outputs=["affine", "total"])
    affine = {"module": Affine(), "inputs": ["x"], "outputs": ["y"]}
    write_torchscript_model(repo, "unchecked", checksum=False, **affine)
    tampered = write_torchscript_model(repo, "tampered", **affine)
    tampered.with_name("model.pt.sha256").write_text("0" * 64 + "  model.pt\n")
    write_torchscript_model(repo, "bad_precision", parameters={"precision": "int4"}, **affine)
    write_torchscript_model(repo, "graphs_on_cpu", parameters={"cuda_graphs": "true"}, **affine)
    server = start_module_server(repo, "--no-exit-on-error", wait_ready=False)
    server.wait_for_log("serving, but not ready: 4 model(s) failed to load")
    return server


def test_tensors_map_to_forward_positions_by_index_or_argument_name(small_models_server):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 10, dtype=np.float32)
    with grpcclient.InferenceServerClient(small_models_server.grpc_url) as client:
        result = client.infer("indexed", [_input("INPUT__0", a), _input("INPUT__1", b)])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), 2 * a + 1)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), a + b)
        result = client.infer("named", [_input("a", a), _input("b", b)])
        np.testing.assert_array_equal(result.as_numpy("affine"), 2 * a + 1)
        np.testing.assert_array_equal(result.as_numpy("total"), a + b)


def test_unverified_files_and_bad_options_fail_to_load_with_the_reason(small_models_server):
    with grpcclient.InferenceServerClient(small_models_server.grpc_url) as client:
        reasons = {m.name: m.reason for m in client.get_model_repository_index().models}
        assert not client.is_model_ready("tampered")
    assert "has no checksum file model.pt.sha256" in reasons["unchecked"]
    assert "does not match model.pt.sha256" in reasons["tampered"]
    assert "parameter 'precision' must be one of fp32, fp16; got 'int4'" in reasons["bad_precision"]
    assert "parameter 'cuda_graphs' needs a GPU instance" in reasons["graphs_on_cpu"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: the GPU model loads (GPU tests)")
def test_gpu_model_without_cuda_fails_to_load_naming_cuda(torchscript_gpu_export, start_server):
    server = start_server(torchscript_gpu_export.repository, wait_ready=False)
    assert server.process.wait(timeout=60) != 0
    log = server.log()
    assert "load failed for model 'resnet18_gpu': instance_group KIND_GPU needs CUDA, but CUDA is not available" in log
    assert "use KIND_CPU" in log
