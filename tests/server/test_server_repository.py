"""Repository control (RELIABILITY B10, B11, F12, F17): model control modes, load/unload, the admin credential."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_helpers import CALL_TIMEOUT_S, infer_request, metric, output_array, scrape
from tritonclient.grpc import service_pb2, service_pb2_grpc

TOKEN = "s3cret-admin-token"
ADMIN = (("authorization", f"Bearer {TOKEN}"),)
SLOW_MS = 400


def _load(stub, name, metadata=ADMIN):
    return stub.RepositoryModelLoad(
        service_pb2.RepositoryModelLoadRequest(model_name=name), metadata=metadata, timeout=CALL_TIMEOUT_S
    )


def _unload(stub, name, metadata=ADMIN):
    return stub.RepositoryModelUnload(
        service_pb2.RepositoryModelUnloadRequest(model_name=name), metadata=metadata, timeout=CALL_TIMEOUT_S
    )


def _error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return err.value


def _index(stub) -> dict[str, tuple[str, str, str]]:
    reply = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=CALL_TIMEOUT_S)
    return {m.name: (m.version, m.state, m.reason) for m in reply.models}


def _affine(stub, model="affine", version=""):
    x = np.array([[1, 2, 3, 4]], np.float32)
    response = stub.ModelInfer(infer_request(model, x, model_version=version), timeout=CALL_TIMEOUT_S)
    np.testing.assert_allclose(output_array(response), 2 * x + 1)
    return response


@pytest.fixture(scope="module")
def repository(tmp_path_factory, write_test_model):
    base = tmp_path_factory.mktemp("control")
    repo = base / "models"
    write_test_model(repo, "affine")
    write_test_model(repo, "other")
    write_test_model(repo, "slow", kind="slow", delay_ms=SLOW_MS, max_batch_size=1, dynamic_batching=False)
    write_test_model(base, "outside")  # next to the repository: never loadable
    (base / "token").write_text(TOKEN + "\n")
    return repo


@pytest.fixture(scope="module")
def explicit(repository, start_module_server):
    token_file = repository.parent / "token"
    return start_module_server(
        repository, "--model-control-mode", "explicit", "--load-model", "affine", "--admin-token-file", str(token_file)
    )


@pytest.fixture(scope="module")
def stub(explicit):
    with grpc.insecure_channel(explicit.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_mode_none_refuses_load_and_unload_like_triton(tmp_path, write_test_model, start_server):
    write_test_model(tmp_path, "affine")
    srv = start_server(tmp_path)
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for call in (_load, _unload):
            error = _error(call, stub, "affine", metadata=())
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "explicit model load / unload is not allowed if polling is enabled" in error.details()
        _affine(stub)  # still served
        assert _index(stub) == {"affine": ("1", "READY", "")}


def test_explicit_mode_loads_only_the_named_models_and_lists_the_rest(stub):
    index = _index(stub)
    assert index["affine"] == ("1", "READY", "")
    assert index["other"][1] == "UNAVAILABLE" and index["slow"][1] == "UNAVAILABLE"
    assert "outside" not in index
    error = _error(stub.ModelInfer, infer_request("other", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    _affine(stub)


def test_load_then_unload_with_triton_client(explicit, stub):
    headers = dict(ADMIN)
    with grpcclient.InferenceServerClient(explicit.grpc_url) as client:
        assert not client.is_model_ready("other")
        client.load_model("other", headers=headers)
        assert client.is_model_ready("other")
        _affine(stub, "other")
        assert _index(stub)["other"] == ("1", "READY", "")
        client.unload_model("other", headers=headers)
        assert not client.is_model_ready("other")
        assert _index(stub)["other"] == ("", "UNAVAILABLE", "unloaded")
        error = _error(stub.ModelInfer, infer_request("other", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        client.unload_model("other", headers=headers)  # unloading what is not loaded succeeds, as in Triton
        assert client.is_server_ready()


@pytest.mark.parametrize(
    "name, code, text",
    [
        ("", grpc.StatusCode.INVALID_ARGUMENT, "Model name cannot be empty."),
        (" \t", grpc.StatusCode.INVALID_ARGUMENT, "Model name cannot be empty."),
        ("../outside", grpc.StatusCode.INVALID_ARGUMENT, "must not contain path traversal characters"),
        ("..", grpc.StatusCode.INVALID_ARGUMENT, "must not contain path traversal characters"),
        ("a/b", grpc.StatusCode.INVALID_ARGUMENT, "must not contain path traversal characters"),
        ("..\\outside", grpc.StatusCode.INVALID_ARGUMENT, "must not contain path traversal characters"),
        ("x\x00y", grpc.StatusCode.INVALID_ARGUMENT, "must not contain path traversal characters"),
        ("%2e%2e%2foutside", grpc.StatusCode.INVALID_ARGUMENT, "must not contain path traversal characters"),
        ("..outside", grpc.StatusCode.INVALID_ARGUMENT, "load failed for model '..outside': no model folder"),
        ("nope", grpc.StatusCode.INVALID_ARGUMENT, "load failed for model 'nope': no model folder"),
    ],
)
def test_B10_B11_load_refuses_bad_names_with_triton_texts(stub, name, code, text):
    error = _error(_load, stub, name)
    assert error.code() == code, error.details()
    assert text in error.details()
    if "no model folder" in text:
        _unload(stub, name)  # an ordinary name that is not loaded: nothing to do
    else:
        unload_error = _error(_unload, stub, name)
        assert (unload_error.code(), unload_error.details()) == (code, error.details())
    assert "outside" not in _index(stub) and name not in _index(stub)


def test_F12_reload_with_a_corrupt_new_version_keeps_the_old_one_serving(explicit, stub, repository):
    _load(stub, "other")
    (repository / "other" / "2").mkdir()
    (repository / "other" / "2" / "model.onnx").write_bytes(b"this is not an onnx model")
    try:
        error = _error(_load, stub, "other")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "load failed for model 'other'" in error.details()
        response = _affine(stub, "other")
        assert response.model_version == "1"
        assert _index(stub)["other"] == ("1", "READY", "")
        assert "load failed for model 'other'" in explicit.log()
    finally:
        (repository / "other" / "2" / "model.onnx").unlink()
        (repository / "other" / "2").rmdir()
        _unload(stub, "other")


def test_unload_waits_for_the_models_in_flight_requests(explicit, stub):
    _load(stub, "slow")
    running = stub.ModelInfer.future(infer_request("slow", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
    queued = stub.ModelInfer.future(infer_request("slow", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
    deadline = time.monotonic() + 10
    while metric(scrape(explicit.metrics_url), "nv_inference_pending_request_count", model="slow", version="1") != 1:
        assert time.monotonic() < deadline and not running.done(), "the two requests did not arrive"
        time.sleep(0.01)
    _unload(stub, "slow")  # one request executing, one queued
    assert running.done() and queued.done(), "unload returned before the model's requests finished"
    for future in (running, queued):
        np.testing.assert_allclose(output_array(future.result()), 1.0)
    error = _error(stub.ModelInfer, infer_request("slow", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S)
    assert error.code() == grpc.StatusCode.NOT_FOUND


# -- the admin credential (F17) ----------------------------------------------------------------------------------


def test_F17_admin_rpcs_need_the_credential_and_inference_does_not(stub):
    missing = _error(_load, stub, "other", metadata=())
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" in missing.details()
    wrong = _error(_load, stub, "other", metadata=(("authorization", "Bearer not-the-token"),))
    assert wrong.code() == grpc.StatusCode.PERMISSION_DENIED
    assert TOKEN not in wrong.details()
    not_bearer = _error(_unload, stub, "affine", metadata=(("authorization", TOKEN),))
    assert not_bearer.code() == grpc.StatusCode.PERMISSION_DENIED
    for call, request in (
        (stub.LogSettings, service_pb2.LogSettingsRequest()),
        (stub.TraceSetting, service_pb2.TraceSettingRequest()),
    ):
        assert _error(call, request, timeout=CALL_TIMEOUT_S).code() == grpc.StatusCode.UNAUTHENTICATED
        error = _error(call, request, metadata=ADMIN, timeout=CALL_TIMEOUT_S)
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    # The data plane needs no credential.
    _affine(stub)
    assert stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="affine"), timeout=CALL_TIMEOUT_S).model_stats
    assert _index(stub)["affine"][1] == "READY"


def test_F17_token_from_the_environment(tmp_path, write_test_model, start_server, monkeypatch):
    write_test_model(tmp_path, "affine")
    monkeypatch.setenv("IPSBENCH_ADMIN_TOKEN", "from-the-env")
    srv = start_server(tmp_path, "--model-control-mode", "explicit")
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert _error(_load, stub, "affine").code() == grpc.StatusCode.PERMISSION_DENIED
        _load(stub, "affine", metadata=(("authorization", "Bearer from-the-env"),))
        _affine(stub)
    assert "from-the-env" not in srv.log()


def test_explicit_mode_beyond_loopback_without_a_credential_refuses_to_start(tmp_path, write_test_model):
    write_test_model(tmp_path, "affine")
    env = {k: v for k, v in os.environ.items() if k != "IPSBENCH_ADMIN_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "ipsbench.server", "--model-repository", str(tmp_path), "--host", "0.0.0.0"]
        + ["--grpc-port", "0", "--metrics-port", "0", "--model-control-mode", "explicit"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode != 0
    assert "refusing to start" in result.stderr and "--admin-token-file" in result.stderr
    assert "gRPC listening" not in result.stdout
