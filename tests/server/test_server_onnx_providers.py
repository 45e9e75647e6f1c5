"""ONNX Runtime session settings and execution providers from config.pbtxt, through a real ipsbench-serve: thread
counts and graph optimization levels are honoured, GPU providers missing from a CPU build fail the load with a message
naming onnxruntime-gpu, and bad settings fail the load with the parameter's name. GPU serving (CUDA provider, IO
binding) is skipped where ONNX Runtime has no CUDA provider or there is no GPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

SUPPORTS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _process_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line in /proc status")


def _set_threads(folder: Path, count: int) -> None:
    config = folder / "config.pbtxt"
    text = config.read_text().replace(
        'key: "intra_op_thread_count" value { string_value: "1" }',
        f'key: "intra_op_thread_count" value {{ string_value: "{count}" }}',
    )
    config.write_text(text)


def _copy_resnet(model_repository: Path, repo: Path, name: str, extra: str) -> None:
    """The session's resnet18 ONNX under ``name``, one thread, with ``extra`` appended to its config."""
    source = model_repository / "resnet18"
    (repo / name / "1").mkdir(parents=True)
    shutil.copy(source / "1" / "model.onnx", repo / name / "1" / "model.onnx")
    config = (source / "config.pbtxt").read_text().replace('name: "resnet18"', f'name: "{name}"')
    config += 'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n' + extra
    (repo / name / "config.pbtxt").write_text(config)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="counts threads through /proc (Linux)")
def test_intra_op_thread_count_sizes_the_sessions_thread_pool(tmp_path, write_test_model, start_server):
    counts = {}
    for threads in (1, 7):
        repo = tmp_path / f"threads{threads}"
        _set_threads(write_test_model(repo, "affine"), threads)
        server = start_server(repo)
        counts[threads] = _process_threads(server.process.pid)
        server.stop()
    # ONNX Runtime's intra-op pool has (threads - 1) workers besides the calling thread.
    assert counts[7] - counts[1] >= 5, counts


def test_graph_optimization_level_is_the_one_triton_names(model_repository, tmp_path, start_server):
    """``level: 2`` (Triton: no optimizations) and the default (all) give each the bits a local session with the same
    options gives, and those differ: the setting reaches ONNX Runtime."""
    repo = tmp_path / "levels"
    _copy_resnet(model_repository, repo, "level_none", "optimization { graph { level: 2 } }\n")
    _copy_resnet(model_repository, repo, "level_all", "")
    _copy_resnet(model_repository, repo, "level_basic", "optimization { graph { level: -1 } }\n")
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64)).astype(np.float32)
    local = {}
    for name, level in (
        ("level_none", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        ("level_all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        ("level_basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
    ):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])
        local[name] = session.run(None, {"input": x})[0]
    assert not np.array_equal(local["level_none"], local["level_all"]), "the levels give the same bits: no test"

    server = start_server(repo)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for name, expected in local.items():
            tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            served = client.infer(name, [tensor]).as_numpy("output")
            np.testing.assert_array_equal(served, expected, err_msg=name)


@pytest.fixture(scope="module")
def refused(tmp_path_factory, write_test_model, start_module_server):
    """A server whose repository holds models that must not load here, and their reasons."""
    repo = tmp_path_factory.mktemp("refused")
    gpu = 'instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]\n'
    trt = (
        'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" '
        'parameters { key: "precision_mode" value: "FP16" } } ] } }\n'
    )
    if not SUPPORTS_CUDA:
        for name, extra in (("on_gpu", gpu), ("tensorrt_ep", gpu + trt)):
            folder = write_test_model(repo, name)
            config = folder / "config.pbtxt"
            config.write_text(config.read_text().replace("instance_group [ { count: 1 kind: KIND_CPU } ]\n", "") + extra)
    write_test_model(repo, "bad_mode", extra_config='parameters { key: "execution_mode" value { string_value: "3" } }\n')
    write_test_model(repo, "bad_arena", extra_config='parameters { key: "enable_mem_arena" value { string_value: "yes" } }\n')
    write_test_model(repo, "fine")
    server = start_module_server(repo, "--no-exit-on-error", wait_ready=False)
    expected = 2 if SUPPORTS_CUDA else 4
    server.wait_for_log(f"serving, but not ready: {expected} model(s) failed to load")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        reasons = {m.name: m.reason for m in client.get_model_repository_index().models if m.reason}
        assert client.is_model_ready("fine")
    return reasons


@pytest.mark.skipif(SUPPORTS_CUDA, reason="this onnxruntime has the CUDA provider: GPU models load")
def test_gpu_models_on_a_cpu_build_fail_to_load_naming_onnxruntime_gpu(refused):
    assert "execution provider CUDAExecutionProvider is not available" in refused["on_gpu"]
    assert "install onnxruntime-gpu" in refused["on_gpu"]
    assert "execution provider TensorrtExecutionProvider is not available" in refused["tensorrt_ep"]
    assert "install onnxruntime-gpu" in refused["tensorrt_ep"]


def test_bad_session_parameters_fail_to_load_with_the_parameters_name(refused):
    assert "parameter 'execution_mode' must be 0 (sequential) or 1 (parallel), got 3" in refused["bad_mode"]
    assert "parameter 'enable_mem_arena' must be an integer, got 'yes'" in refused["bad_arena"]


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not (SUPPORTS_CUDA and _has_gpu()), reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_kind_gpu_serves_on_the_cuda_provider_with_the_cpu_result(model_repository, tmp_path, start_server):
    repo = tmp_path / "gpu"
    _copy_resnet(model_repository, repo, "resnet_gpu", "")
    config = repo / "resnet_gpu" / "config.pbtxt"
    config.write_text(config.read_text().replace("kind: KIND_CPU", "kind: KIND_GPU\n  gpus: 0"))
    x = np.random.default_rng(9).standard_normal((4, 3, 64, 64)).astype(np.float32)
    expected = ort.InferenceSession(str(repo / "resnet_gpu" / "1" / "model.onnx")).run(None, {"input": x})[0]
    server = start_server(repo)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        served = client.infer("resnet_gpu", [tensor]).as_numpy("output")
    np.testing.assert_allclose(served, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))
    assert "cuda:0" in server.log()
