"""``ipsbench-load ui``: locust's web UI drives a real run; its ipsbench tab shows the exact figures, and the run's
report is written after each test and when the process ends on a signal."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from load_helpers import REPO_ROOT, assert_accounted
from test_load_security import mtls_server, pki  # noqa: F401 - the mutual-TLS server and its certificates
from waiting import wait_until

UI_READY_S = 120.0
"""The UI first describes the model and serializes its requests (a busy machine can take a while)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(url: str, form: dict | None = None) -> bytes:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    with urllib.request.urlopen(url, data=data, timeout=60) as response:
        return response.read()


def template_args(page: str) -> dict:
    """What locust's page hands its form (``window.templateArgs``)."""
    marker = "window.templateArgs = "
    return json.JSONDecoder().raw_decode(page, page.index(marker) + len(marker))[0]


class UiProcess:
    """An ``ipsbench-load ui`` process and its web UI's address."""

    def __init__(self, process: subprocess.Popen, base: str, log: Path, out: Path) -> None:
        self.process, self.base, self.log, self.out = process, base, log, out

    def log_text(self) -> str:
        return self.log.read_text()

    def exited(self) -> str | None:
        if self.process.poll() is None:
            return None
        return f"ipsbench-load ui exited ({self.process.returncode}):\n{self.log_text()}"

    def wait_answering(self) -> None:
        def answering() -> bool:
            try:
                fetch(self.base + "/ipsbench/stats")
            except OSError:
                return False
            return True

        wait_until(answering, timeout_s=UI_READY_S, what="the web UI to answer", give_up=self.exited,
                   interval_s=0.2)

    def steps(self) -> list[dict]:
        return json.loads(fetch(self.base + "/ipsbench/stats"))["steps"]

    def wait_measured(self, index: int, ok: int = 1) -> dict:
        """Test ``index`` on the tab once it has ``ok`` successes measured."""

        def measured() -> dict | None:
            steps = self.steps()
            step = steps[index] if len(steps) > index else None
            return step if step and step["ok"] >= ok and step["latency_us"] else None

        # A worker's requests arrive with its reports, every 3 s.
        return wait_until(measured, timeout_s=120, what=f"measured requests of test {index + 1} on the tab",
                          give_up=self.exited, interval_s=0.2)

    def swarm(self, users: int = 2, **custom) -> dict:
        return json.loads(fetch(self.base + "/swarm", {"user_count": users, "spawn_rate": users, **custom}))

    def stop_test(self) -> None:
        fetch(self.base + "/stop", {})

    def report(self) -> dict:
        return json.loads((self.out / "report.json").read_text())

    def wait_report(self, steps: int) -> dict:
        """The report.json written after the ``steps``-th test stopped."""

        def written() -> dict | None:
            try:
                report = self.report()
            except (OSError, ValueError):
                return None
            return report if len(report["steps"]) >= steps else None

        return wait_until(written, what=f"the report with {steps} tests", give_up=self.exited, interval_s=0.2)

    def end(self, signum: int = signal.SIGINT) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=60)


@pytest.fixture
def start_ui(tmp_path):
    """Start ``python -m ipsbench.loadgen ui --target TARGET --model resnet18 --web-port P --out <tmp> ...`` (no
    ``--out`` when ``out`` is false) in ``cwd``; processes left running are killed."""
    processes: list[subprocess.Popen] = []
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))

    def start(target: str, *args: str, cwd: Path = REPO_ROOT, out: bool = True) -> UiProcess:
        index = len(processes)
        port, folder, log = free_port(), tmp_path / f"report{index}", tmp_path / f"ui{index}.log"
        with log.open("w") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "ipsbench.loadgen", "ui", "--target", target, "--model", "resnet18",
                 "--web-port", str(port), *(["--out", str(folder)] if out else []), *args],
                cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        processes.append(process)
        return UiProcess(process, f"http://127.0.0.1:{port}", log, folder)

    def start_worker(master_port: int, log: Path) -> subprocess.Popen:
        with log.open("a") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "ipsbench.loadgen", "worker", "--master", f"127.0.0.1:{master_port}"],
                cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)
        processes.append(process)
        return process

    start.worker = start_worker
    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def answering_ui(server, start_ui, remote_workers: int, *args: str):
    """``start_ui`` with ``args``, its web UI answering and, with ``remote_workers``, a worker of its own started on
    its own and ready (its requests prepared)."""
    master_port = free_port()
    distributed = ["--remote-workers", "1", "--master-bind", f"127.0.0.1:{master_port}"] if remote_workers else []
    ui = start_ui(server.grpc_url, *args, *distributed)
    if remote_workers:
        start_ui.worker(master_port, ui.log)
    ui.wait_answering()
    if remote_workers:
        wait_until(lambda: "ready" in ui.log_text(), what="the worker to prepare its requests", give_up=ui.exited,
                   interval_s=0.2)
    return ui


@pytest.mark.parametrize("remote_workers", [0, 1])
def test_the_web_ui_runs_users_shows_exact_percentiles_and_reports_each_test(server, start_ui, remote_workers):
    """Without workers the UI's process sends the load; with --remote-workers a worker started on its own does,
    and the tab shows its reports. The report is written when the test stops, and again at Ctrl-C."""
    ui = answering_ui(server, start_ui, remote_workers)
    assert template_args(fetch(ui.base + "/").decode())["extra_options"] == {}  # no rate: a closed loop
    assert ui.swarm(users=2)["success"]
    step = ui.wait_measured(0)
    assert step["ok"] > 0 and step["images_per_s"] > 0 and step["errors_total"] == 0
    latency = step["latency_us"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    page = fetch(ui.base + "/ipsbench").decode()
    assert "exact latency" in page and "images/sec" in page and "concurrency 2" in page
    assert ui.swarm(users=3)["success"]  # new users while the test runs: a step of their own
    ui.wait_measured(1)
    ui.stop_test()
    after_test = ui.wait_report(steps=2)
    assert after_test["scenario"] == "ui" and after_test["status"] == "complete"
    assert ui.end(signal.SIGINT) == 0  # no test was running: the report's verdict, PASS
    report = ui.report()
    assert_accounted(report)
    assert report["verdict"] == "PASS" and report["status"] == "complete" and report["interrupted_by"] is None
    first, second = report["steps"]
    assert (first["concurrency"], second["concurrency"]) == (2, 3)
    for step in (first, second):
        assert step["open_loop"] is None and step["latency_us"]["count"] > 0 and step["server"] is None
    assert (ui.out / "report.md").is_file() and (ui.out / "report.html").is_file() and (ui.out / "steps.csv").is_file()
    if remote_workers:
        (worker,) = report["workers"]
        assert worker["final_report"] and worker["lost"] is None
        assert [entry["ok"] for entry in worker["steps"]] == [first["ok"], second["ok"]]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_test_stops_it_and_writes_the_report_with_the_server_side(server, start_ui, signum):
    """A signal while a test runs ends it (in-flight requests waited for), and the report says so, with every
    request accounted and the server's metrics scraped at the test's start and end."""
    ui = start_ui(server.grpc_url, "--metrics-url", server.metrics_url)
    ui.wait_answering()
    assert ui.swarm(users=2)["success"]
    ui.wait_measured(0, ok=5)
    assert ui.end(signum) == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum]
    report = ui.report()
    assert_accounted(report)
    assert report["status"] == "interrupted" and report["interrupted_by"] == signal.Signals(signum).name
    assert report["server_metrics_url"] == server.metrics_url and report["warnings"] == []
    (step,) = report["steps"]
    assert step["ok"] >= 5 and step["interrupted"]
    server_side = step["server"]
    assert server_side is not None and server_side["inference_count"] >= server_side["request_success"] > 0


@pytest.mark.parametrize("remote_workers", [0, 1])
def test_an_open_loop_ui_sends_each_test_at_its_rate(server, start_ui, remote_workers):
    """With --rate each test is an open-loop step at that rate (sent by a worker with --remote-workers); the form's
    custom parameter changes it for the next test, and values out of bounds are refused before any user starts."""
    ui = answering_ui(server, start_ui, remote_workers, "--rate", "20", "--arrival", "constant", "--drain", "2s")
    offered = template_args(fetch(ui.base + "/").decode())["extra_options"]  # the form's custom parameters
    assert offered["rate"]["default_value"] == 20.0
    refused = ui.swarm(users=1, rate="nan")
    assert not refused["success"] and "rate must be in" in refused["message"]
    refused = ui.swarm(users=1, rate="fast")
    assert not refused["success"] and "rate must be a number of requests/s, got 'fast'" in refused["message"]
    refused = ui.swarm(users=0)
    assert not refused["success"] and "users must be in" in refused["message"]
    assert ui.steps() == []
    assert ui.swarm(users=1)["success"]
    ui.wait_measured(0, ok=5)
    ui.stop_test()
    ui.wait_report(steps=1)
    # A worker rejoins once its users have stopped (--drain); until then the master refuses to start a test.
    wait_until(lambda: ui.swarm(users=2, rate="40")["success"], what="the second test to start", give_up=ui.exited,
               interval_s=0.2)
    ui.wait_measured(1, ok=5)
    ui.stop_test()
    ui.wait_report(steps=2)
    assert ui.end(signal.SIGINT) == 0
    report = ui.report()
    assert_accounted(report)
    first, second = report["steps"]
    assert (first["target_rate_per_s"], second["target_rate_per_s"]) == (20.0, 40.0)
    assert first["open_loop"]["senders"] == 1 and second["open_loop"]["senders"] == 2
    for step in (first, second):
        assert step["concurrency"] is None and step["open_loop"]["scheduled"] > 0
        assert step["open_loop"]["sent"] + step["open_loop"]["not_sent"] >= step["open_loop"]["scheduled"]
        assert step["service_time_us"] is not None
    assert report["settings"]["ui"]["arrival"] == "constant"


def test_an_unwritable_out_stops_the_ui_before_anything_starts(start_ui, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    ui = start_ui("127.0.0.1:1", "--out", str(taken))
    assert ui.process.wait(timeout=60) == 2
    assert f"--out {taken}: exists and is not a folder" in ui.log_text()
    assert "web UI on" not in ui.log_text()


def test_without_out_the_ui_writes_no_report(server, start_ui, tmp_path):
    """An exploring session without --out leaves nothing behind, not even the default reports/ folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ui = start_ui(server.grpc_url, cwd=cwd, out=False)
    ui.wait_answering()
    assert ui.swarm(users=1)["success"]
    ui.wait_measured(0)
    assert ui.end(signal.SIGINT) == 0
    assert list(cwd.iterdir()) == [] and not ui.out.exists()
    assert "no report written: no --out" in ui.log_text()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_the_ui_reaches_a_mutual_tls_server_and_redacts_its_headers(mtls_server, pki, start_ui):  # noqa: F811
    secret = "s3cret-ui-token"
    ui = start_ui(mtls_server.grpc_url, "--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "client.pem"),
                  "--tls-key", str(pki / "client.key"), "--header", f"authorization=Bearer {secret}")
    ui.wait_answering()
    assert ui.swarm(users=1)["success"]
    ui.wait_measured(0, ok=3)
    assert ui.end(signal.SIGTERM) == 143
    report = ui.report()
    assert_accounted(report)
    assert report["steps"][0]["ok"] >= 3 and report["steps"][0]["errors_total"] == 0
    assert report["settings"]["target"]["tls_ca"] == str(pki / "ca.pem")
    assert report["settings"]["target"]["headers"] == [["authorization", "<redacted>"]]
    for written in ui.out.iterdir():
        assert secret not in written.read_text(errors="replace"), written.name
    assert secret not in ui.log_text()
