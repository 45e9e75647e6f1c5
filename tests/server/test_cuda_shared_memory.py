"""CUDA shared memory on a GPU: a region created by tritonclient's CUDA shm utilities in this (client) process is
registered through its CUDA IPC handle, inference reads its input there and writes its output there. Needs a GPU
and the CUDA runtime; without them tests/server/test_shared_memory.py checks the UNIMPLEMENTED answer instead."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_helpers import CALL_TIMEOUT_S
from tritonclient.utils import InferenceServerException

FEATURES = 4


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _cuda_available(), reason="needs an NVIDIA GPU and the CUDA runtime"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, write_test_model, start_module_server):
    repo = tmp_path_factory.mktemp("cuda-shm-models")
    write_test_model(repo, "affine", max_batch_size=8, features=FEATURES)
    return start_module_server(repo)


def test_cuda_shared_memory_round_trip(server):
    import tritonclient.utils.cuda_shared_memory as cudashm

    x = np.arange(2 * FEATURES, dtype=np.float32).reshape(2, FEATURES)
    source = cudashm.create_shared_memory_region("cuda_in", x.nbytes, 0)
    target = cudashm.create_shared_memory_region("cuda_out", x.nbytes, 0)
    try:
        cudashm.set_shared_memory_region(source, [x])
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            client.register_cuda_shared_memory("cuda_in", cudashm.get_raw_handle(source), 0, x.nbytes)
            client.register_cuda_shared_memory("cuda_out", cudashm.get_raw_handle(target), 0, x.nbytes)
            status = client.get_cuda_shared_memory_status()
            assert {(r.name, r.device_id, r.byte_size) for r in status.regions.values()} == {
                ("cuda_in", 0, x.nbytes), ("cuda_out", 0, x.nbytes)}
            with pytest.raises(InferenceServerException) as err:
                client.register_cuda_shared_memory("cuda_in", cudashm.get_raw_handle(source), 0, x.nbytes)
            assert err.value.message() == "shared memory region 'cuda_in' already in manager"
            with pytest.raises(InferenceServerException) as err:  # larger than the allocation
                client.register_cuda_shared_memory("too_big", cudashm.get_raw_handle(source), 0, 1 << 30)
            assert err.value.message() == "failed to register shared memory region 'too_big': invalid args"

            inputs = [grpcclient.InferInput("input", [2, FEATURES], "FP32")]
            inputs[0].set_shared_memory("cuda_in", x.nbytes)
            outputs = [grpcclient.InferRequestedOutput("output")]
            outputs[0].set_shared_memory("cuda_out", x.nbytes)
            client.infer("affine", inputs, outputs=outputs, client_timeout=CALL_TIMEOUT_S)
            got = cudashm.get_contents_as_numpy(target, np.float32, [2, FEATURES])
            np.testing.assert_array_equal(got, 2 * x + 1)

            assert refused_system_status(client, "cuda_in")
            client.unregister_cuda_shared_memory()
            assert not client.get_cuda_shared_memory_status().regions
    finally:
        cudashm.destroy_shared_memory_region(source)
        cudashm.destroy_shared_memory_region(target)


def refused_system_status(client, name: str) -> bool:
    """A CUDA region asked for as a system one: Triton's NOT_FOUND text."""
    with pytest.raises(InferenceServerException) as err:
        client.get_system_shared_memory_status(name)
    return err.value.message() == (
        f"The region named '{name}' is registered as CUDA shared memory, not system shared memory"
    )
