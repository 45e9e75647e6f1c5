"""ipsbench-load against MLServer, a KServe v2 server that is not ipsbench-serve: the same closed- and open-loop runs
work unchanged (no ipsbench-only or Triton-only call on the path), and MLServer's errors are accounted under MLServer's
own status codes, matching what MLServer itself counted.

MLServer runs from scripts/mlserver.sh, which installs it into an environment of its own on first use (a download);
the tests are skipped only when that setup is impossible (the script's exit status 2 and its message)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from load_helpers import REPO_ROOT, assert_accounted
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

MODELS = Path(__file__).resolve().parent / "mlserver_models"
SCRIPT = REPO_ROOT / "scripts" / "mlserver.sh"
SETUP_TIMEOUT_S = 420
"""The first call downloads and installs MLServer (about 40 s on a fast index)."""
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
SCRIPT_SETUP_FAILED = 2
"""scripts/mlserver.sh's exit status when MLServer cannot be installed (then its message starts `mlserver.sh:`)."""
SHORT = ("--payload", "fp32", "--warmup", "500ms", "--duration", "1500ms", "--drain", "5s")
FLAKY_MESSAGE = "flaky model: deliberate failure"
"""What the ``flaky`` model raises on every second request (mlserver_models/flaky/flaky_runtime.py)."""
STALL_S = 2.0
"""How long the ``stall`` model holds every fifth request it receives (mlserver_models/stall/stall_runtime.py)."""
STALL_RATE_PER_S = 20
STALL_WINDOW_S = 4.0

pytestmark = pytest.mark.timeout(SETUP_TIMEOUT_S + 180)  # the first test pays for the one-time install


@dataclass
class MLServerProcess:
    """A running ``mlserver start`` on loopback ports of its own."""

    process: subprocess.Popen
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def infer_counts(self, model: str) -> tuple[int, int]:
        """MLServer's own count of ModelInfer calls to ``model`` that succeeded and that failed."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        counts = {"model_infer_request_success": 0, "model_infer_request_failure": 0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if family.name in counts and sample.name.endswith("_total") and sample.labels.get("model") == model:
                    counts[family.name] += int(sample.value)
        return counts["model_infer_request_success"], counts["model_infer_request_failure"]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a bound."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (MLServer takes fixed ports, not port 0)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def set_up_mlserver() -> None:
    """Run the script's one-time setup; skip where it says setup is impossible, fail on anything else."""
    try:
        result = subprocess.run([str(SCRIPT), "--version"], check=False, capture_output=True, text=True,
                                timeout=SETUP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{SCRIPT.name} did not finish setting MLServer up within {SETUP_TIMEOUT_S} s", pytrace=False)
    message = result.stderr.strip()
    if result.returncode == SCRIPT_SETUP_FAILED and message.startswith("mlserver.sh:"):
        pytest.skip(message)
    if result.returncode != 0:
        pytest.fail(f"{SCRIPT.name} --version exited {result.returncode}:\n{result.stdout}\n{message}", pytrace=False)


def wait_until_ready(server: MLServerProcess, models: list[str]) -> None:
    """Until ServerReady and each ModelReady answer true over gRPC (bounded); fail with MLServer's log otherwise."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while True:
            if server.process.poll() is not None:
                pytest.fail(f"MLServer exited ({server.process.returncode}) while starting:\n{server.log()}",
                            pytrace=False)
            try:
                if stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=1).ready and all(
                    stub.ModelReady(service_pb2.ModelReadyRequest(name=name), timeout=1).ready for name in models
                ):
                    return
            except grpc.RpcError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"MLServer was not ready within {READY_TIMEOUT_S} s:\n{server.log()}", pytrace=False)
            time.sleep(0.2)


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory):
    """MLServer serving the models of mlserver_models/ (``tiny``, ``flaky``, ``stall``), in-process (parallel_workers 0),
    on free loopback ports; stopped when the module ends."""
    set_up_mlserver()
    workdir = tmp_path_factory.mktemp("mlserver")
    models = workdir / "models"
    shutil.copytree(MODELS, models, ignore=shutil.ignore_patterns("__pycache__"))
    http_port, grpc_port, metrics_port = free_ports(3)
    settings = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
                "parallel_workers": 0, "host": "127.0.0.1"}
    (models / "settings.json").write_text(json.dumps(settings))
    # MLServer reads any MLSERVER_* variable as a setting: none from the caller's environment leaks in.
    env = {name: value for name, value in os.environ.items() if not name.startswith("MLSERVER_")}
    log_path = workdir / "mlserver.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([str(SCRIPT), "start", str(models)], cwd=workdir, stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
    server = MLServerProcess(process, grpc_port, metrics_port, log_path)
    try:
        wait_until_ready(server, sorted(path.parent.name for path in models.glob("*/model-settings.json")))
        yield server
    finally:
        server.stop()


def test_sweep_against_mlserver_is_valid_and_names_the_server(mlserver, start_load):
    run = start_load(mlserver.grpc_url, "--concurrency", "1,2", *SHORT, model="tiny")
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()

    report = run.report()
    assert report["valid"] and report["status"] == "complete", report.get("invalid_reasons")
    server = report["target"]["server"]  # from ServerMetadata, not assumed
    assert server["name"] == "mlserver" and server["version"], server
    assert f"Target `{mlserver.grpc_url}`: mlserver {server['version']}." in (run.out / "report.md").read_text()
    model_input = report["model"]["input"]  # what MLServer's ModelMetadata says (model-settings.json)
    assert (model_input["name"], model_input["datatype"], model_input["shape"]) == ("input", "FP32", [-1, 3, 64, 64])
    assert [step["concurrency"] for step in report["steps"]] == [1, 2]
    assert_accounted(report)
    for step in report["steps"]:
        assert step["images_per_s"] > 0 and step["images_ok"] == step["window_requests"]["ok"] > 0
        assert step["errors_total"] == 0 and step["abandoned"] == 0, step["errors"]
        latency = step["latency_us"]
        assert 0 < latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"]


def test_rate_against_mlserver_sends_at_the_target_rate(mlserver, start_load):
    run = start_load(mlserver.grpc_url, "--rate", "20,40", "--arrival", "constant", "--payload", "fp32",
                     "--warmup", "500ms", "--duration", "2s", "--drain", "5s", model="tiny", scenario="rate")
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()

    report = run.report()
    assert report["valid"] and report["scenario"] == "rate", report.get("invalid_reasons")
    assert_accounted(report)
    assert [step["target_rate_per_s"] for step in report["steps"]] == [20.0, 40.0]
    for step in report["steps"]:
        open_loop, target = step["open_loop"], step["target_rate_per_s"]
        assert open_loop["achieved_send_rate_per_s"] == pytest.approx(target, rel=0.25), open_loop
        assert open_loop["not_sent"] == 0 and step["errors_total"] == 0, step["errors"]
        assert step["images_per_s"] == pytest.approx(target, rel=0.25)


def test_L21_a_server_stalling_one_request_in_five_does_not_delay_the_others_sends(mlserver, start_load):
    """Every fifth request waits STALL_S: at 20/s about 8 of them are in flight at once. Arrivals still go out
    on schedule (none held back behind the stalled ones), so the median is the fast requests' service time and
    the tail (p90 and above: 1 in 5 stalled) shows the stall."""
    run = start_load(mlserver.grpc_url, "--rate", str(STALL_RATE_PER_S), "--arrival", "constant", "--payload",
                     "fp32", "--warmup", "500ms", "--duration", f"{STALL_WINDOW_S:g}s", "--drain", "10s",
                     model="stall", scenario="rate")
    assert run.finish(timeout=120) == 0, run.stdout + run.stderr()

    report = run.report()
    assert report["valid"] and report["warnings"] == [], report.get("invalid_reasons")
    assert_accounted(report)
    (step,) = report["steps"]
    open_loop, stall_us = step["open_loop"], STALL_S * 1e6
    assert open_loop["scheduled"] == pytest.approx(STALL_RATE_PER_S * STALL_WINDOW_S, abs=1), open_loop
    assert open_loop["sent"] == open_loop["scheduled"] and open_loop["not_sent"] == 0, open_loop
    assert open_loop["late_sends"] <= 0.2 * open_loop["sent"], open_loop  # a few: the shared machine's doing
    assert open_loop["send_lateness_us"]["max"] < 0.25 * stall_us, open_loop  # none waited for a stalled one
    assert step["errors_total"] == 0 and step["abandoned"] == 0, step["errors"]
    latency, service = step["latency_us"], step["service_time_us"]
    assert service["p50"] < 0.1 * stall_us, service
    assert latency["p50"] <= service["p50"] + 0.05 * stall_us, (latency, service)
    assert latency["p90"] >= 0.95 * stall_us and latency["p99"] >= 0.95 * stall_us, latency  # 1 in 5 stalled


def test_mlserver_errors_are_counted_by_its_status_code_and_message(mlserver, start_load):
    ok_before, failed_before = mlserver.infer_counts("flaky")
    run = start_load(mlserver.grpc_url, "--concurrency", "2", "--payload", "fp32", "--warmup", "0s",
                     "--duration", "1500ms", "--drain", "5s", model="flaky")
    assert run.finish(timeout=90) == 2, run.stdout + run.stderr()  # errors over --max-error-rate 0: invalid

    report = run.report()
    assert not report["valid"]
    assert_accounted(report)
    (step,) = report["steps"]
    assert step["abandoned"] == 0 and step["ok"] > 0 and step["failed"] > 0
    assert abs(step["ok"] - step["failed"]) <= 2  # the model fails every second request it receives
    (error,) = step["errors"]
    assert (error["code"], error["outcome"], error["count"]) == ("INTERNAL", "failed", step["failed"])
    assert error["message"] == FLAKY_MESSAGE  # MLServer passes the model's exception text through

    # What ipsbench-load counted is what MLServer counted: every issued request reached it and ended as reported.
    ok_after, failed_after = mlserver.infer_counts("flaky")
    totals = report["totals"]
    assert (ok_after - ok_before, failed_after - failed_before) == (totals["ok"], totals["failed"])
    assert totals["ok"] + totals["failed"] == totals["issued"]


def test_model_mlserver_does_not_have_stops_the_run_before_any_load(mlserver, start_load):
    run = start_load(mlserver.grpc_url, "--concurrency", "1", *SHORT, model="nope")
    assert run.finish(timeout=60) == 2, run.stdout + run.stderr()  # set-up failed
    assert "'nope'" in run.stderr() and "not found" in run.stderr()  # MLServer's answer, passed on
    assert not (run.out / "report.json").exists()
