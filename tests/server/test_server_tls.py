"""TLS and mutual TLS (RELIABILITY F18, security checklist 1): nothing is served in plaintext to a TLS server, and
a mutual-TLS server refuses clients without a certificate. Certificates are made per test run with ``openssl``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_helpers import CALL_TIMEOUT_S, infer_request, output_array
from tritonclient.grpc import service_pb2, service_pb2_grpc

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")

READY_TIMEOUT_S = 60


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(folder: Path, name: str, subject: str, extensions: str) -> None:
    """A key and a certificate for ``name`` signed by the CA in ``folder``."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", subject,
             "-out", f"{name}.csr", cwd=folder)  # fmt: skip
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=ipsbench test CA", cwd=folder)  # fmt: skip
    _issue(folder, "server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _issue(folder, "client", "/CN=ipsbench test client", "extendedKeyUsage=clientAuth\n")
    return Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "client.pem", folder / "client.key")


@pytest.fixture(scope="module")
def repository(tmp_path_factory, write_test_model):
    repo = tmp_path_factory.mktemp("tls-models")
    write_test_model(repo, "affine")
    return repo


def _credentials(pki: Pki, with_client_cert: bool) -> grpc.ChannelCredentials:
    if with_client_cert:
        return grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), private_key=pki.client_key.read_bytes(), certificate_chain=pki.client_cert.read_bytes()
        )
    return grpc.ssl_channel_credentials(pki.ca.read_bytes())


def _start(start_module_server, repository, pki: Pki, *extra: str):
    srv = start_module_server(
        repository, "--grpc-tls-cert", str(pki.server_cert), "--grpc-tls-key", str(pki.server_key), *extra,
        wait_ready=False,
    )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    with grpc.secure_channel(srv.grpc_url, _credentials(pki, with_client_cert=True)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while True:
            try:
                if stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=2).ready:
                    return srv
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline and srv.process.poll() is None, srv.log()
            time.sleep(0.1)


@pytest.fixture(scope="module")
def tls_server(start_module_server, repository, pki):
    return _start(start_module_server, repository, pki)


@pytest.fixture(scope="module")
def mtls_server(start_module_server, repository, pki):
    return _start(
        start_module_server, repository, pki, "--grpc-tls-root-certs", str(pki.ca), "--grpc-tls-client-auth"
    )


def _infer(channel: grpc.Channel) -> np.ndarray:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    return output_array(stub.ModelInfer(infer_request("affine", np.ones((1, 4), np.float32)), timeout=CALL_TIMEOUT_S))


def test_tls_server_serves_a_tls_client(tls_server, pki):
    with grpc.secure_channel(tls_server.grpc_url, _credentials(pki, with_client_cert=False)) as channel:
        np.testing.assert_allclose(_infer(channel), 3.0)
    assert "gRPC over TLS" in tls_server.log()


def test_F18_plaintext_client_to_a_tls_server_gets_unavailable(tls_server):
    with grpc.insecure_channel(tls_server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _infer(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_F18_mtls_server_refuses_a_client_without_a_certificate(mtls_server, pki):
    with grpc.secure_channel(mtls_server.grpc_url, _credentials(pki, with_client_cert=False)) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _infer(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_server_serves_triton_client_with_a_certificate(mtls_server, pki):
    with grpcclient.InferenceServerClient(
        mtls_server.grpc_url,
        ssl=True,
        root_certificates=str(pki.ca),
        private_key=str(pki.client_key),
        certificate_chain=str(pki.client_cert),
    ) as client:
        assert client.is_server_ready()
        tensor = grpcclient.InferInput("input", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 4), np.float32))
        np.testing.assert_allclose(client.infer("affine", [tensor]).as_numpy("output"), 1.0)


def test_tls_options_are_checked_before_start(repository, pki):
    result = subprocess.run(
        [sys.executable, "-m", "ipsbench.server", "--model-repository", str(repository), "--grpc-tls-cert", str(pki.server_cert)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2
    assert "--grpc-tls-cert and --grpc-tls-key go together" in result.stderr
