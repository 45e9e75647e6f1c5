"""ipsbench-load to a mutual-TLS ipsbench-serve, with metadata headers whose values never reach a report, and the
engine bench JSON carried into report.json. Certificates are made per test module with ``openssl``."""
import json
import shutil
import subprocess

import pytest
from load_helpers import assert_accounted

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")

QUICK = ("--warmup", "300ms", "--duration", "1s", "--drain", "5s")
SECRET = "s3cret-token-value"


def openssl(folder, *args):
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)


def issue(folder, name, subject, extensions):
    openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", subject,
            "-out", f"{name}.csr")
    (folder / f"{name}.ext").write_text(extensions)
    openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=ipsbench load test CA")
    issue(folder, "server", "/CN=localhost", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    issue(folder, "client", "/CN=ipsbench load test client", "extendedKeyUsage=clientAuth\n")
    return folder


@pytest.fixture(scope="module")
def mtls_server(model_repository, start_module_server, pki):
    return start_module_server(
        model_repository, "--grpc-tls-cert", str(pki / "server.pem"), "--grpc-tls-key", str(pki / "server.key"),
        "--grpc-tls-root-certs", str(pki / "ca.pem"), "--grpc-tls-client-auth", wait_ready=False,
    )


def test_mutual_tls_headers_redacted_and_the_engine_bench_carried(mtls_server, pki, start_load, tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"model": "resnet18", "results": [{"batch_size": 8, "images_per_s": 1234.5}]}))
    run = start_load(mtls_server.grpc_url, "--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "client.pem"),
                     "--tls-key", str(pki / "client.key"), "--header", f"authorization=Bearer {SECRET}",
                     "--engine-bench", str(bench), "--concurrency", "1", *QUICK)
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    assert_accounted(report)
    assert report["engine"] == json.loads(bench.read_text())
    assert report["settings"]["target"]["headers"] == [["authorization", "<redacted>"]]
    assert report["settings"]["target"]["tls_ca"] == str(pki / "ca.pem")
    for written in run.out.iterdir():
        assert SECRET not in written.read_text(errors="replace"), written.name
    assert SECRET not in run.stdout + run.stderr()


def test_plaintext_to_a_tls_server_cannot_start(mtls_server, start_load):
    run = start_load(mtls_server.grpc_url, "--concurrency", "1", "--deadline", "5s", *QUICK)
    assert run.finish(timeout=60) == 2
    assert "UNAVAILABLE" in run.stderr() and not (run.out / "report.json").exists()
