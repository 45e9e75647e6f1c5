"""The chain the compose file runs, on this machine's CPU with the CLIs instead of containers: the export job's
command, the server's command (gated by the image's gRPC health check, as compose's service_healthy is), the
headless SLO run as master and the worker command twice, each taken from compose.yaml with only what a CPU box
and a short test need changed: a small model, loopback addresses, free ports, short steps. Each command runs with
only what its image installs importable (image_env.py), so a package missing from an image fails here."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deploy_helpers import DEPLOY, load_compose
from image_env import build_image_environment, image_command

GRPC_LINE = re.compile(r"gRPC listening on [^\s]+:(\d+)")
METRICS_LINE = re.compile(r"metrics on http://[^\s/]+:(\d+)/metrics")
EXPORT_TIMEOUT_S = 300
READY_TIMEOUT_S = 60
RUN_TIMEOUT_S = 150
IMAGE_OF_SERVICE = {"export": "export", "server": "server", "load-run": "load", "worker": "load"}
STOP_TIMEOUT_S = 40

# What a CPU test changes in the compose commands, flag by flag.
SMALL_MODEL = "resnet18"
SHORT_STEPS = {"--duration": "1s", "--warmup": "500ms", "--low": "4", "--high": "16", "--max-steps": "3"}


def replace(argv: list[str], changes: dict[str, str]) -> list[str]:
    """``argv`` with each ``--flag value`` in ``changes`` set (appended when absent)."""
    argv = list(argv)
    for flag, value in changes.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Images:
    """The image environments of compose's services, built once per test under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.environments: dict[str, Path] = {}

    def command(self, service: str, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        image = IMAGE_OF_SERVICE[service]
        if image not in self.environments:
            self.environments[image] = build_image_environment(image, self.folder / image)
        return image_command(self.environments[image], argv)

    def run(self, service: str, argv: list[str], timeout_s: float) -> subprocess.CompletedProcess:
        command, env = self.command(service, argv)
        # Run outside the repository: its packages must come from the image environment, not the working folder.
        return subprocess.run(command, cwd=self.folder, env=env, capture_output=True, text=True, timeout=timeout_s)

    def spawn(self, service: str, argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
        command, env = self.command(service, argv)
        with log.open("w") as stderr:
            return subprocess.Popen(command, cwd=self.folder, env=env, stderr=stderr, text=True, **kwargs)


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


@pytest.mark.timeout(600)
def test_export_serve_and_a_distributed_slo_run_with_the_compose_commands(tmp_path):
    services = load_compose()["services"]
    models, reports = tmp_path / "models", tmp_path / "reports"
    started: list[subprocess.Popen] = []
    images = Images(tmp_path / "images")
    try:
        # 1. The export job, for the CPU: a small model, KIND_CPU.
        export = list(services["export"]["command"])
        export[1] = SMALL_MODEL
        export = replace(export, {"--device": "cpu", "--max-batch-size": "8", "--out": str(models),
                                  "--image-size": "64"})
        result = images.run("export", export, EXPORT_TIMEOUT_S)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (models / SMALL_MODEL / "config.pbtxt").is_file()

        # 2. The server, on loopback and free ports; ready when the image's HEALTHCHECK says healthy.
        serve = replace(services["server"]["command"], {"--model-repository": str(models), "--host": "127.0.0.1",
                                                        "--grpc-port": "0", "--metrics-port": "0"})
        server = images.spawn("server", serve, tmp_path / "server.log", stdout=subprocess.PIPE, bufsize=1)
        started.append(server)
        grpc_port = metrics_port = None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (grpc_port and metrics_port):
            line = server.stdout.readline()
            assert line, f"server exited ({server.poll()}):\n{(tmp_path / 'server.log').read_text()}"
            grpc_port = grpc_port or (m := GRPC_LINE.search(line)) and int(m[1])
            metrics_port = metrics_port or (m := METRICS_LINE.search(line)) and int(m[1])
            assert time.monotonic() < deadline, "server printed no ports in time"
        while True:
            health = subprocess.run([sys.executable, str(DEPLOY / "docker" / "grpc_health_check.py"),
                                     f"127.0.0.1:{grpc_port}"], capture_output=True, text=True, timeout=30)
            if health.returncode == 0:
                break
            assert time.monotonic() < deadline, f"never healthy: {health.stdout}"
            time.sleep(0.2)

        # 3. The headless SLO run as master, and the worker command as many times as WORKERS says.
        master_port = free_port()
        run = replace(services["load-run"]["command"], {
            "--target": f"127.0.0.1:{grpc_port}", "--model": SMALL_MODEL,
            "--metrics-url": f"http://127.0.0.1:{metrics_port}/metrics", "--out": str(reports / "slo"),
            "--master-bind": f"127.0.0.1:{master_port}", **SHORT_STEPS,
        })
        master = images.spawn("load-run", run, tmp_path / "master.log", stdout=subprocess.PIPE)
        started.append(master)
        worker_count = int(services["worker"]["deploy"]["replicas"])
        assert int(run[run.index("--remote-workers") + 1]) == worker_count
        worker_argv = replace(services["worker"]["command"], {"--master": f"127.0.0.1:{master_port}"})
        workers = [images.spawn("worker", worker_argv, tmp_path / f"worker{i}.log") for i in range(worker_count)]
        started += workers

        stdout, _ = master.communicate(timeout=RUN_TIMEOUT_S)
        master_log = (tmp_path / "master.log").read_text()
        # Steps this short hold too few samples to claim p99 (10,000 needed), so the search's first step can
        # neither meet nor miss the objective: SLO INCONCLUSIVE, exit 4 (2, INVALID, would mean the chain broke).
        assert master.returncode == 4, f"exit {master.returncode}\n{stdout}\n{master_log[-4000:]}"
        for index, worker in enumerate(workers):
            assert worker.wait(timeout=STOP_TIMEOUT_S) == 0, (tmp_path / f"worker{index}.log").read_text()[-2000:]

        report = json.loads((reports / "slo" / "report.json").read_text())
        assert report["valid"] and report["verdict"] == "INCONCLUSIVE"
        assert report["slo"]["verdict"] == "INCONCLUSIVE" and report["slo"]["inconclusive_steps"] == [0]
        p99 = next(o for o in report["slo"]["objectives"] if o["name"] == "p99")
        assert not p99["enough_samples"] and p99["samples_needed"] == 10_000
        steps = report["steps"]
        assert 1 <= len(steps) <= int(SHORT_STEPS["--max-steps"])
        assert sum(step["ok"] for step in steps) > 0
        assert stop(server) == 0
    finally:
        for process in reversed(started):
            stop(process)
