"""``ipsbench-load ui``: locust's web UI drives a real run; its ipsbench tab shows the exact figures."""
import json
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest
from load_helpers import REPO_ROOT
from waiting import wait_until


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(url: str, form: dict | None = None) -> bytes:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    with urllib.request.urlopen(url, data=data, timeout=10) as response:
        return response.read()


@pytest.mark.parametrize("remote_workers", [0, 1])
def test_the_web_ui_runs_users_and_shows_exact_percentiles(server, tmp_path, remote_workers):
    """Without workers the UI's process sends the load; with --remote-workers a worker started on its own does,
    and the tab shows its reports."""
    port, master_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    distributed = ["--remote-workers", "1", "--master-bind", f"127.0.0.1:{master_port}"] if remote_workers else []
    processes = []
    with (tmp_path / "ui.log").open("w") as log:
        ui = subprocess.Popen(
            [sys.executable, "-m", "ipsbench.loadgen", "ui", "--target", server.grpc_url, "--model", "resnet18",
             "--web-port", str(port), *distributed], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        processes.append(ui)
        if remote_workers:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "ipsbench.loadgen", "worker", "--master", f"127.0.0.1:{master_port}"],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT))
    try:
        log_text = (tmp_path / "ui.log").read_text

        def exited() -> str | None:
            return None if ui.poll() is None else f"ipsbench-load ui exited ({ui.returncode}):\n{log_text()}"

        def answering() -> bool:
            try:
                fetch(base + "/ipsbench/stats")
            except OSError:
                return False
            return True

        wait_until(answering, what="the web UI to answer", give_up=exited, interval_s=0.2)
        if remote_workers:
            wait_until(lambda: "ready" in log_text(), what="the worker to prepare its requests", give_up=exited,
                       interval_s=0.2)
        fetch(base + "/swarm", {"user_count": 2, "spawn_rate": 2, "host": server.grpc_url})

        def measured() -> dict | None:
            steps = json.loads(fetch(base + "/ipsbench/stats"))["steps"]
            return steps[0] if steps and steps[0]["ok"] > 0 and steps[0]["latency_us"] else None

        # A worker's requests arrive with its reports, every 3 s.
        step = wait_until(measured, timeout_s=120, what="measured requests on the tab", give_up=exited,
                          interval_s=0.2)
        assert step["ok"] > 0 and step["images_per_s"] > 0 and step["errors_total"] == 0
        latency = step["latency_us"]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
        page = fetch(base + "/ipsbench").decode()
        assert "exact latency" in page and "images/sec" in page
        fetch(base + "/stop", {})
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=20) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
